import Fleet
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A real mosquitto (Debian's `mosquitto` package, installed by `make test`) on a free loopback
/// port, with its own config and persistence directory; restartable on the same port.
final class Broker: @unchecked Sendable {
    let dir: String
    let port: Int
    let configPath: String
    private var pid: pid_t = 0
    let tls: Bool

    static let binary: String = {
        for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"] where FileManager.default.isExecutableFile(atPath: p) { return p }
        return "mosquitto"
    }()

    /// `tlsFiles`: (ca, cert, key) for a TLS listener that requires client certificates.
    init(tlsFiles: (String, String, String)? = nil) throws {
        dir = temporaryDirectory("broker")
        port = Self.freePort()
        configPath = dir + "/mosquitto.conf"
        tls = tlsFiles != nil
        var conf = """
            listener \(port) 127.0.0.1
            \(getuid() == 0 ? "user root" : "")
            allow_anonymous true
            persistence true
            persistence_location \(dir)/
            autosave_interval 1
            max_queued_messages 100000
            log_dest file \(dir)/mosquitto.log

            """
        if let (ca, cert, key) = tlsFiles {
            conf += "cafile \(ca)\ncertfile \(cert)\nkeyfile \(key)\nrequire_certificate true\n"
        }
        try conf.write(toFile: configPath, atomically: true, encoding: .utf8)
        try start()
    }

    var url: String { "\(tls ? "mqtts" : "mqtt")://127.0.0.1:\(port)" }

    func start() throws {
        pid = try Self.spawn([Self.binary, "-c", configPath])
        AgentdProcess.running.add(pid)
        // Listening once a TCP connect succeeds.
        let until = Date().addingTimeInterval(10)
        while Date() < until {
            if Self.canConnect(port) { return }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                // Reaped: its pid may be reused, so it is no longer ours to kill.
                AgentdProcess.running.remove(pid)
                pid = 0
                break
            }
            usleep(20_000)
        }
        throw MQTTError("mosquitto did not start on port \(port): \((try? String(contentsOfFile: dir + "/mosquitto.log", encoding: .utf8)) ?? "")")
    }

    /// posix_spawn with an empty signal mask and default dispositions: the test process blocks
    /// SIGTERM, and a child started by Foundation's Process inherits that (mosquitto would never
    /// see the SIGTERM that makes it save its sessions).
    ///
    /// Every descriptor above stderr is closed in the child. Foundation learns that a child it
    /// started has exited when the end of a socket pair that only that child holds is closed;
    /// a broker spawned while another test was starting agentctl inherited that end, and the
    /// other test's wait then lasted as long as the broker (stop 19's CI run never finished).
    /// glibc's posix_spawn_file_actions_addclosefrom_np (2.34), which Swift's Glibc module does
    /// not declare: looked up by name.
    private static let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
        guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
    }()

    static func spawn(_ argv: [String]) throws -> pid_t {
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGTERM, SIGINT, SIGHUP, SIGPIPE] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var files = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&files)
        defer { posix_spawn_file_actions_destroy(&files) }
        posix_spawn_file_actions_addopen(&files, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&files, 2, "/dev/null", O_WRONLY, 0)
        guard let closeFrom = Self.addCloseFrom else { throw MQTTError("posix_spawn_file_actions_addclosefrom_np: not in this C library (glibc 2.34 or later)") }
        guard closeFrom(&files, 3) == 0 else { throw MQTTError("posix_spawn_file_actions_addclosefrom_np failed") }
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { for a in cArgs { free(a) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &files, &attr, cArgs, environ)
        guard rc == 0 else { throw MQTTError("\(argv[0]): \(String(cString: strerror(rc)))") }
        return pid
    }

    /// SIGTERM: mosquitto saves its persistent sessions and queued messages, then exits.
    func stop() {
        guard pid > 0 else { return }
        kill(pid, SIGTERM)
        var status: Int32 = 0
        let until = Date().addingTimeInterval(10)
        while waitpid(pid, &status, WNOHANG) == 0 {
            if Date() > until {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                break
            }
            usleep(10_000)
        }
        AgentdProcess.running.remove(pid)
        pid = 0
    }

    func restart() throws {
        stop()
        try start()
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: dir)
    }

    static func canConnect(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    /// A port the kernel just handed out (bound to port 0 and released).
    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// An operator's session on this broker (clean unless `clientId` is given: then a persistent one).
    func session(clientId: String? = nil, tlsFiles: (String, String, String)? = nil) throws -> MQTTSession {
        var s = MQTTSettings(host: "127.0.0.1", port: port, tls: tls, clientId: clientId ?? "test-\(FleetTime.messageId().prefix(12))")
        s.cleanSession = clientId == nil
        s.backoffInitial = 0.1
        s.backoffMax = 0.5
        if let (ca, cert, key) = tlsFiles {
            s.caFile = ca
            s.certFile = cert
            s.keyFile = key
        }
        return try MQTTSession(settings: s, broker: url)
    }
}

extension MQTTSession {
    /// Waits for a message on `topic` whose payload satisfies `match`.
    func wait(for topic: String, seconds: Double = 20, where match: (MQTTMessage) -> Bool = { _ in true }) -> MQTTMessage? {
        let until = Date().addingTimeInterval(seconds)
        while let m = next(until: until) {
            if m.topic == topic && match(m) { return m }
        }
        return nil
    }

    func json(_ m: MQTTMessage) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(m.payload))) as? [String: Any] ?? [:]
    }
}
