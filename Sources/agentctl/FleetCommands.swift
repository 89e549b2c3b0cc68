import ArgumentParser
@preconcurrency import Crypto
import Fleet
import Foundation

#if canImport(Glibc)
import Glibc
#endif

struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Ed25519 key pairs for signing deployments.",
        subcommands: [Generate.self])

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a key pair: DIR/NAME.key (private, 0600) and DIR/NAME.pub (public).",
            discussion: """
                The public file goes to the devices (deploy.trusted_keys in agentd.toml); the private
                one stays with the operator and signs with `agentctl fleet deploy --key DIR/NAME.key`.
                Existing files are never overwritten.
                """)

        @Option(help: "Directory to write the pair into (made if missing).") var out: String
        @Option(help: "The key's name: devices report which key signed a deployment by it.") var name = "operator"
        @Flag(help: "Print the paths and public key as JSON.") var json = false

        func run() throws {
            try reportingErrors {
                guard FleetConfig.isKeyName(name) else { throw ValidationError("--name must be letters, digits, '-', '_' or '.', 1 to 64 of them") }
                try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
                let key = Curve25519.Signing.PrivateKey()
                let privatePath = out + "/\(name).key", publicPath = out + "/\(name).pub"
                try Self.writeNew(privatePath, key.rawRepresentation.base64EncodedString() + "\n", mode: 0o600)
                try Self.writeNew(publicPath, key.publicKey.rawRepresentation.base64EncodedString() + "\n", mode: 0o644)
                let pub = key.publicKey.rawRepresentation.base64EncodedString()
                if json {
                    printJSON(["private_key": privatePath, "public_key": publicPath, "public": pub, "name": name])
                } else {
                    print("wrote \(privatePath) (0600, keep it secret) and \(publicPath)")
                    print("devices trust it with: [deploy] trusted_keys = [\"/etc/agentd/keys/\(name).pub\"]")
                }
            }
        }

        static func writeNew(_ path: String, _ text: String, mode: mode_t) throws {
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
            guard fd >= 0 else { throw MQTTError("\(path): \(String(cString: strerror(errno))) (existing keys are not overwritten)") }
            defer { close(fd) }
            let bytes = Array(text.utf8)
            guard write(fd, bytes, bytes.count) == bytes.count, fsync(fd) == 0 else {
                throw MQTTError("\(path): \(String(cString: strerror(errno)))")
            }
        }
    }
}

/// The broker connection options every `agentctl fleet` command takes.
struct FleetConfig: ParsableArguments {
    @Option(help: "The broker: mqtt://host:port or mqtts://host:port.") var broker = "mqtt://127.0.0.1:1883"
    @Option(help: "The fleet's name (mqtt.fleet on the devices).") var fleet = "default"
    @Option(help: "The topic prefix (mqtt.prefix on the devices).") var prefix = "edge"
    @Option(help: "Broker user name.") var username = ""
    @Option(help: "A file holding the broker password.") var passwordFile = ""
    @Option(help: "TLS: CA bundle.") var caFile = ""
    @Option(help: "TLS: client certificate.") var certFile = ""
    @Option(help: "TLS: client key.") var keyFile = ""

    static func isKeyName(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 64 && s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) } && s != "." && s != ".."
    }

    var root: String { "\(prefix)/\(fleet)" }

    func connect() throws -> MQTTSession {
        let (host, port, tls) = try MQTTSettings.parseBroker(broker)
        var s = MQTTSettings(host: host, port: port, tls: tls, clientId: "agentctl-\(getpid())-\(FleetTime.messageId().prefix(8))")
        s.cleanSession = true
        s.username = username
        if !passwordFile.isEmpty {
            guard let data = FileManager.default.contents(atPath: passwordFile) else { throw MQTTError("\(passwordFile): cannot be read") }
            s.password = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .newlines)
        }
        s.caFile = caFile
        s.certFile = certFile
        s.keyFile = keyFile
        s.backoffMax = 2
        let session = try MQTTSession(settings: s, broker: broker)
        // Under the fleet's operator/ subtree, which an operator account may write (README, "Beyond one broker").
        session.syncTopic = "\(root)/operator/\(s.clientId)/sync"
        return session
    }
}

struct FleetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet",
        abstract: "The operator's side of the fleet: device status, commands, signed deployments, live telemetry (over the MQTT broker).",
        discussion: """
            Every subcommand takes --broker, --fleet and --prefix (as the devices' [mqtt] section) and
            the broker's credentials. Topics and payloads: README, "Fleet over MQTT".
            """,
        subcommands: [FleetStatusCommand.self, FleetCmd.self, FleetDeploy.self, FleetWatch.self])
}

/// Reads the retained status of every device for `seconds`.
func collectStatus(_ link: MQTTSession, root: String, seconds: Double) throws -> [String: FleetStatus] {
    try link.subscribe(["\(root)/+/status"])
    var devices: [String: FleetStatus] = [:]
    let until = Date().addingTimeInterval(seconds)
    while let m = link.next(until: until) {
        guard m.topic.hasSuffix("/status"), let s = try? JSONDecoder().decode(FleetStatus.self, from: Data(m.payload)) else { continue }
        let name = String(m.topic.dropFirst(root.count + 1).dropLast("/status".count))
        devices[name] = s
    }
    return devices
}

struct FleetStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "A table of the fleet's devices from their retained status.")
    @OptionGroup var fleet: FleetConfig
    @Option(help: "Seconds to collect retained status messages.") var wait = 1.5
    @Flag(help: "JSON: device name → its status message.") var json = false

    func run() throws {
        try reportingErrors {
            let link = try fleet.connect()
            defer { link.close() }
            let devices = try collectStatus(link, root: fleet.root, seconds: wait)
            if json {
                printJSON(devices)
                return
            }
            let rows = devices.keys.sorted().map { name -> [String] in
                let s = devices[name]!
                return [name, s.state, s.model ?? "-", s.modelVersion.map(String.init) ?? "-", s.precision ?? "-", s.drift ?? "-",
                        s.uptimeS.map { String(format: "%.0f s", $0) } ?? "-", s.lastDeployment ?? "-"]
            }
            print(table(["device", "state", "model", "version", "precision", "drift", "uptime", "last deployment"], rows))
            print("\(devices.count) device(s); \(devices.values.filter { $0.state == "online" }.count) online")
        }
    }
}

struct FleetCmd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cmd",
        abstract: "Send a command to a device (or all, or group:NAME) and print the replies.",
        discussion: """
            Verbs: status, learn, pause-learning, resume-learning, rollback, drift-reset, reload, feedback.
            rollback is signed like a deployment: --key DIR/NAME.key [--to VERSION]. Other arguments
            as JSON with --args, e.g. learn --args '{"dry_run": true}',
            feedback --args '{"label": "3", "input": [...]}'. Replies come back on an MQTT 5 response topic
            (or DEVICE/cmd/VERB/reply from 3.1.1 devices).
            """)
    @OptionGroup var fleet: FleetConfig
    @Argument(help: "A device name, `all`, or `group:NAME`.") var device: String
    @Argument(help: "The verb.") var verb: String
    @Option(help: "The command's arguments as a JSON object.") var args: String?
    @Option(help: "rollback: the private key that signs it (NAME.key).") var key: String?
    @Option(help: "rollback: the registry version to serve (default: the one before the active one).") var to: Int?
    @Option(help: "rollback: the anti-rollback version (default: the Unix time).") var version: Int?
    @Option(help: "Seconds to wait for replies (for one device: until its reply).") var timeout = 10.0
    @Flag(help: "Print each reply as a JSON line.") var json = false

    func run() throws {
        try reportingErrors {
            var parsed: [String: FleetValue]?
            if let args {
                guard let v = try? JSONDecoder().decode([String: FleetValue].self, from: Data(args.utf8)) else {
                    throw ValidationError("--args must be a JSON object")
                }
                parsed = v
            }
            let address = device == "all" ? "all" : device.hasPrefix("group:") ? "group/\(device.dropFirst(6))" : device
            if verb == "rollback" {
                // Signed like a deployment, so it moves the devices' anti-rollback counter.
                guard let key else { throw ValidationError("rollback is signed: give --key DIR/NAME.key") }
                let target = device == "all" ? "all" : device.hasPrefix("group:") ? device : "device:\(device)"
                let m = DeploymentManifest(kind: "rollback", deployment: "rollback@\(version ?? Int(Date().timeIntervalSince1970))",
                                           version: version ?? Int(Date().timeIntervalSince1970), name: "", sha256: "", size: 0, target: target,
                                           expires: FleetTime.string(Date().addingTimeInterval(600)))
                var withTarget = m
                withTarget.rollbackTo = to
                let e = try DeploymentEnvelope.signed(withTarget, model: nil, key: try SigningKey.load(path: key))
                var a = parsed ?? [:]
                a["manifest"] = .string(e.manifest)
                a["signature"] = e.signature.map(FleetValue.string)
                a["key"] = e.key.map(FleetValue.string)
                parsed = a
            }
            let link = try fleet.connect()
            defer { link.close() }
            let cmd = Fleet.FleetCommand(args: parsed)
            let responseTopic = "\(fleet.root)/operator/\(cmd.msgId)"
            // Replies from MQTT 5 devices come to the response topic; 3.1.1 devices use their reply topic.
            try link.subscribe([responseTopic, "\(fleet.root)/+/cmd/\(verb)/reply"])
            try link.publish(topic: "\(fleet.root)/\(address)/cmd/\(verb)", payload: [UInt8](try JSONEncoder().encode(cmd)),
                             responseTopic: responseTopic, correlation: Array(cmd.msgId.utf8))
            let until = Date().addingTimeInterval(timeout)
            var replies = 0, failed = false
            while let m = link.next(until: until) {
                guard let r = try? JSONDecoder().decode(FleetReply.self, from: Data(m.payload)), r.inReplyTo == cmd.msgId else { continue }
                replies += 1
                if r.status != "ok" { failed = true }
                if json {
                    printJSON(r, pretty: false)
                } else {
                    let result = r.result.map { String(decoding: (try? JSONEncoder().encode($0)) ?? Data(), as: UTF8.self) } ?? ""
                    print("\(r.device): \(r.status)\(r.duplicate == true ? " (duplicate)" : "")\(r.reason.map { " — \($0)" } ?? "")\(result.isEmpty ? "" : " \(result.prefix(2000))")")
                }
                if address == device { break }
            }
            if replies == 0 {
                printError("agentctl: no reply from \(device) within \(Int(timeout)) s")
                throw ExitCode(1)
            }
            if failed { throw ExitCode(1) }
        }
    }
}

struct FleetWatch: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "watch", abstract: "Live telemetry: a line per device report.")
    @OptionGroup var fleet: FleetConfig
    @Option(help: "Stop after this many seconds (0: until interrupted).") var seconds = 0.0
    @Flag(help: "Print each telemetry message as a JSON line.") var json = false

    func run() throws {
        try reportingErrors {
            let link = try fleet.connect()
            defer { link.close() }
            try link.subscribe(["\(fleet.root)/+/telemetry"])
            let end = seconds > 0 ? Date().addingTimeInterval(seconds) : Date.distantFuture
            if !json {
                print(table(["device", "seq", "req/s", "p50 ms", "p99 ms", "batch", "queue", "drift", "replay", "learner", "RSS MiB", "outbox"], []))
            }
            while let m = link.next(until: end) {
                guard let t = try? JSONDecoder().decode(FleetTelemetry.self, from: Data(m.payload)) else { continue }
                if json {
                    printJSON(t, pretty: false)
                } else {
                    print([t.device, String(t.seq), String(format: "%.1f", t.throughputPerS), String(format: "%.2f", t.latencyP50Ms),
                           String(format: "%.2f", t.latencyP99Ms), String(format: "%.1f", t.meanBatchSize), String(t.queueDepth),
                           t.driftState ?? "-", String(t.replaySamples), t.learner, String(t.rssBytes >> 20), String(t.outboxRows)].joined(separator: "  "))
                }
                fflush(nil)
            }
        }
    }
}

struct FleetDeploy: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "deploy",
        abstract: "Sign a model file and roll it out: canaries first, then the rest, halting when too many fail.",
        discussion: """
            The devices are those whose retained status is online and that TARGET names (device:ID,
            group:NAME or all). Each device gets a manifest addressed to it, signed with --key over its
            exact bytes, carrying --version (above the last version each device accepted; the default
            is the current Unix time, which only grows). The first --canary devices go first; the
            rollout halts once --halt-on-failure devices refused or rolled back. Prints each device's
            outcome; exits 1 when any device did not apply it or the rollout halted.
            """)
    @OptionGroup var fleet: FleetConfig
    @Argument(help: "The model file (safetensors with an edge.manifest).") var model: String
    @Option(help: "The private key file (NAME.key from agentctl keys generate).") var key: String
    @Option(help: "device:ID, group:NAME or all.") var target: String
    @Option(help: "The deployment's name (default: the file name and version).") var name: String?
    @Option(help: "The anti-rollback version (default: the Unix time).") var version: Int?
    @Option(help: "Hardware the model is for: any, x86_64, aarch64.") var hardware = "any"
    @Option(help: "The oldest agent version that may take it.") var minAgentVersion = "0.1.0"
    @Option(help: "Seconds the deployment stays valid.") var expiresIn = 3600.0
    @Option(help: "Devices in the first wave.") var canary = 1
    @Option(help: "Halt the rollout once this many devices fail.") var haltOnFailure = 1
    @Option(help: "Seconds to wait for each wave's results (covers the devices' health gate).") var wait = 120.0
    @Option(help: "Seconds to collect the retained status that lists the devices.") var discover = 1.5
    @Flag(help: "JSON: the rollout's outcome per device.") var json = false

    struct Outcome: Codable {
        var device: String
        var status: String
        var reason: String?
        var modelVersion: Int?
        enum CodingKeys: String, CodingKey {
            case device, status, reason
            case modelVersion = "model_version"
        }
    }

    struct Report: Codable {
        var deployment: String
        var version: Int
        var halted: Bool
        /// From the first deployment sent to the last result received.
        var rolloutSeconds: Double
        /// With connecting and discovering the devices.
        var seconds: Double
        var devices: [Outcome]
        enum CodingKeys: String, CodingKey {
            case deployment, version, halted, seconds, devices
            case rolloutSeconds = "rollout_seconds"
        }
    }

    func run() throws {
        try reportingErrors {
            guard target == "all" || target.hasPrefix("device:") || target.hasPrefix("group:") else {
                throw ValidationError("--target must be device:ID, group:NAME or all")
            }
            guard canary >= 0, haltOnFailure >= 1, wait > 0, expiresIn > 0 else { throw ValidationError("--canary ≥ 0, --halt-on-failure ≥ 1, --wait and --expires-in > 0") }
            let signer = try SigningKey.load(path: key)
            guard let data = FileManager.default.contents(atPath: model) else { throw MQTTError("\(model): cannot be read") }
            let bytes = [UInt8](data)
            let version = self.version ?? Int(Date().timeIntervalSince1970)
            let deployment = name ?? "\((model as NSString).lastPathComponent)@\(version)"
            let sha = SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
            let started = Date()
            let link = try fleet.connect()
            defer { link.close() }
            let statuses = try collectStatus(link, root: fleet.root, seconds: discover)
            var devices = statuses.filter { $0.value.state == "online" }.filter { name, s in
                target == "all" || target == "device:\(name)" || (target.hasPrefix("group:") && (s.groups ?? []).contains(String(target.dropFirst(6))))
            }.keys.sorted()
            if target.hasPrefix("device:") && devices.isEmpty { devices = [String(target.dropFirst(7))] }
            guard !devices.isEmpty else { throw MQTTError("no online device matches \(target) in \(fleet.root) (agentctl fleet status lists them)") }
            try link.subscribe(["\(fleet.root)/+/model/deploy/result"])
            var outcomes: [String: Outcome] = [:]
            var failures = 0, halted = false
            var firstSent: Date?, lastResult = Date()
            let waves = [Array(devices.prefix(canary))].filter { !$0.isEmpty } + [Array(devices.dropFirst(canary))].filter { !$0.isEmpty }
            for (w, wave) in waves.enumerated() {
                if !json { print("wave \(w + 1): \(wave.joined(separator: ", "))") }
                for device in wave {
                    if firstSent == nil { firstSent = Date() }
                    let manifest = DeploymentManifest(deployment: deployment, version: version, name: (model as NSString).lastPathComponent, sha256: sha,
                                                      size: bytes.count, target: "device:\(device)", hardware: hardware, minAgentVersion: minAgentVersion,
                                                      expires: FleetTime.string(Date().addingTimeInterval(expiresIn)))
                    let envelope = try DeploymentEnvelope.signed(manifest, model: bytes, key: signer)
                    try link.publish(topic: "\(fleet.root)/\(device)/model/deploy", payload: [UInt8](try JSONEncoder().encode(envelope)), timeout: 60)
                }
                let until = Date().addingTimeInterval(wait)
                var pending = Set(wave)
                while !pending.isEmpty, let m = link.next(until: until) {
                    // The device is the topic's, not what the payload claims.
                    let fromTopic = String(m.topic.dropFirst(fleet.root.count + 1).dropLast("/model/deploy/result".count))
                    guard m.topic.hasPrefix(fleet.root + "/"), m.topic.hasSuffix("/model/deploy/result"),
                          let r = try? JSONDecoder().decode(DeployResult.self, from: Data(m.payload)), r.deployment == deployment,
                          r.device == fromTopic, pending.contains(r.device) else { continue }
                    pending.remove(r.device)
                    lastResult = Date()
                    outcomes[r.device] = Outcome(device: r.device, status: r.status, reason: r.reason, modelVersion: r.modelVersion)
                    if r.status != "applied" { failures += 1 }
                    if !json { print("  \(r.device): \(r.status)\(r.reason.map { " — \($0)" } ?? "")") }
                }
                for device in pending {
                    outcomes[device] = Outcome(device: device, status: "no_result", reason: "no result within \(Int(wait)) s", modelVersion: nil)
                    failures += 1
                    if !json { print("  \(device): no result within \(Int(wait)) s") }
                }
                if failures >= haltOnFailure && w + 1 < waves.count {
                    halted = true
                    for device in waves[(w + 1)...].joined() {
                        outcomes[device] = Outcome(device: device, status: "not_sent", reason: "the rollout halted after \(failures) failure(s)", modelVersion: nil)
                    }
                    if !json { print("halted: \(failures) device(s) failed (--halt-on-failure \(haltOnFailure)); \(devices.count - outcomes.values.filter { $0.status != "not_sent" }.count) not sent") }
                    break
                }
            }
            let report = Report(deployment: deployment, version: version, halted: halted,
                                rolloutSeconds: max(0, lastResult.timeIntervalSince(firstSent ?? lastResult)), seconds: Date().timeIntervalSince(started),
                                devices: devices.map { outcomes[$0]! })
            if json {
                printJSON(report)
            } else {
                let applied = report.devices.filter { $0.status == "applied" }.count
                print("\(deployment): \(applied)/\(devices.count) applied in \(String(format: "%.2f", report.seconds)) s\(halted ? " (halted)" : "")")
            }
            if halted || report.devices.contains(where: { $0.status != "applied" }) { throw ExitCode(1) }
        }
    }
}
