@preconcurrency import Crypto
import Foundation

/// What a deployment says about itself. It travels as exact bytes (base64 in the envelope) and
/// the Ed25519 signature covers those bytes, so no re-encoding can change what was signed.
public struct DeploymentManifest: Codable, Equatable, Sendable {
    /// "model" (a model file) or "keyset" (key rotation: `keys` replaces the trusted keys).
    public var kind: String
    /// The operator's name for this deployment (shown in results and events).
    public var deployment: String
    /// The anti-rollback counter: a device accepts only a version above the last one it accepted.
    public var version: Int
    public var name: String
    public var sha256: String
    public var size: Int
    /// `device:ID`, `group:NAME` or `all`.
    public var target: String
    /// `any`, `x86_64` or `aarch64`.
    public var hardware: String
    public var minAgentVersion: String
    /// ISO 8601; a deployment read after this is refused.
    public var expires: String
    /// Key rotation only: key name → base64 of the raw 32-byte Ed25519 public key.
    public var keys: [String: String]?
    /// An operator's rollback only: the registry version to serve (absent: the one before the active one).
    public var rollbackTo: Int?

    enum CodingKeys: String, CodingKey {
        case kind, deployment, version, name, sha256, size, target, hardware, keys, expires
        case minAgentVersion = "min_agent_version", rollbackTo = "rollback_to"
    }

    public init(kind: String = "model", deployment: String, version: Int, name: String, sha256: String, size: Int, target: String,
                hardware: String = "any", minAgentVersion: String = "0.0.0", expires: String, keys: [String: String]? = nil) {
        self.kind = kind
        self.deployment = deployment
        self.version = version
        self.name = name
        self.sha256 = sha256
        self.size = size
        self.target = target
        self.hardware = hardware
        self.minAgentVersion = minAgentVersion
        self.expires = expires
        self.keys = keys
    }
}

/// The message on `model/deploy`: the manifest's exact bytes, its signature, the signing key's
/// name, and the model file (all base64), with the usual `msg_id` and `ts`.
public struct DeploymentEnvelope: Codable, Sendable {
    public var msgId: String
    public var ts: String
    public var manifest: String
    public var signature: String?
    public var key: String?
    public var model: String?

    enum CodingKeys: String, CodingKey {
        case manifest, signature, key, model, ts
        case msgId = "msg_id"
    }

    public init(msgId: String, ts: String, manifest: String, signature: String?, key: String?, model: String?) {
        self.msgId = msgId
        self.ts = ts
        self.manifest = manifest
        self.signature = signature
        self.key = key
        self.model = model
    }

    /// Signs `manifest` (encoded once; those bytes are what is signed and sent) with `key`.
    public static func signed(_ manifest: DeploymentManifest, model: [UInt8]?, key: SigningKey) throws -> DeploymentEnvelope {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let bytes = try encoder.encode(manifest)
        let signature = try key.privateKey.signature(for: bytes)
        return DeploymentEnvelope(msgId: FleetTime.messageId(), ts: FleetTime.string(), manifest: bytes.base64EncodedString(),
                                  signature: Data(signature).base64EncodedString(), key: key.name,
                                  model: model.map { Data($0).base64EncodedString() })
    }
}

/// Why a deployment was not applied; `code` goes in the result's `reason` before the detail.
public struct DeploymentRefusal: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Code: String, Sendable {
        case malformed, unsigned, unknownKey = "unknown_key", badSignature = "bad_signature", tampered, notNewer = "not_newer"
        case expired, wrongTarget = "wrong_target", wrongHardware = "wrong_hardware", agentTooOld = "agent_too_old"
        case oversize, invalidModel = "invalid_model", failed, healthGate = "health_gate"
    }

    public let code: Code
    public let detail: String
    public init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    public var description: String { "\(code.rawValue): \(detail)" }
}

/// A named Ed25519 key pair as `agentctl keys generate` writes it: `NAME.key` (0600) holds the
/// base64 of the 32-byte private key, `NAME.pub` the base64 of the 32-byte public key.
public struct SigningKey: Sendable {
    public let name: String
    public let privateKey: Curve25519.Signing.PrivateKey

    public init(name: String, privateKey: Curve25519.Signing.PrivateKey) {
        self.name = name
        self.privateKey = privateKey
    }

    public static func load(path: String) throws -> SigningKey {
        let text = try Self.readSmall(path)
        guard let raw = Data(base64Encoded: text), raw.count == 32, let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw) else {
            throw MQTTError("\(path): not an Ed25519 private key (expected the base64 of 32 bytes, as agentctl keys generate writes it)")
        }
        return SigningKey(name: Self.keyName(path), privateKey: key)
    }

    /// The key's name: the file name without `.key` or `.pub`.
    public static func keyName(_ path: String) -> String {
        var name = (path as NSString).lastPathComponent
        for suffix in [".key", ".pub"] where name.hasSuffix(suffix) { name.removeLast(suffix.count) }
        return name
    }

    static func readSmall(_ path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else { throw MQTTError("\(path): cannot be read") }
        guard data.count <= 4096 else { throw MQTTError("\(path): \(data.count) bytes is too large for a key file") }
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Reads `NAME.pub` files into name → key; every problem is one line naming the file.
    public static func loadPublicKeys(paths: [String]) throws -> [String: Curve25519.Signing.PublicKey] {
        var keys: [String: Curve25519.Signing.PublicKey] = [:]
        for path in paths {
            let text = try readSmall(path)
            guard let key = publicKey(base64: text) else {
                throw MQTTError("\(path): not an Ed25519 public key (expected the base64 of 32 bytes, as agentctl keys generate writes it)")
            }
            keys[keyName(path)] = key
        }
        return keys
    }

    public static func publicKey(base64: String) -> Curve25519.Signing.PublicKey? {
        guard base64.utf8.count <= 64, let raw = Data(base64Encoded: base64), raw.count == 32 else { return nil }
        return try? Curve25519.Signing.PublicKey(rawRepresentation: raw)
    }
}

/// The checks a deployment must pass before anything is written: signature, key, integrity,
/// counter, expiry, target, hardware, agent version, size. The model file's own validity is
/// checked by the agent when it loads it.
public struct DeploymentVerifier: Sendable {
    public var trusted: [String: Curve25519.Signing.PublicKey]
    public var lastVersion: Int
    public var device: String
    public var groups: [String]
    public var hardware: String
    public var agentVersion: String
    public var maxModelBytes: Int

    public init(trusted: [String: Curve25519.Signing.PublicKey], lastVersion: Int, device: String, groups: [String], hardware: String,
                agentVersion: String, maxModelBytes: Int) {
        self.trusted = trusted
        self.lastVersion = lastVersion
        self.device = device
        self.groups = groups
        self.hardware = hardware
        self.agentVersion = agentVersion
        self.maxModelBytes = maxModelBytes
    }

    public static var machineHardware: String {
        #if arch(x86_64)
        "x86_64"
        #elseif arch(arm64)
        "aarch64"
        #else
        "unknown"
        #endif
    }

    /// The manifest as it was signed, and the model bytes (empty for a key set).
    public func verify(_ payload: [UInt8], now: Date = Date()) throws(DeploymentRefusal) -> (DeploymentManifest, [UInt8]) {
        let envelope: DeploymentEnvelope
        do {
            envelope = try JSONDecoder().decode(DeploymentEnvelope.self, from: Data(payload))
        } catch {
            throw DeploymentRefusal(.malformed, "the message is not a deployment envelope ({\"msg_id\", \"ts\", \"manifest\", \"signature\", \"key\", \"model\"})")
        }
        guard let manifestBytes = Data(base64Encoded: envelope.manifest) else { throw DeploymentRefusal(.malformed, "manifest is not base64") }
        guard let signatureText = envelope.signature, !signatureText.isEmpty else { throw DeploymentRefusal(.unsigned, "the deployment carries no signature") }
        guard let keyName = envelope.key, let key = trusted[keyName] else {
            throw DeploymentRefusal(.unknownKey, "key '\((envelope.key ?? "").prefix(64))' is not one of the trusted keys (\(trusted.keys.sorted().joined(separator: ", ")))")
        }
        guard let signature = Data(base64Encoded: signatureText), signature.count == 64, key.isValidSignature(signature, for: manifestBytes) else {
            throw DeploymentRefusal(.badSignature, "the signature does not verify with key '\(keyName)' over the manifest's bytes")
        }
        // Signed by a trusted key from here on; still checked field by field.
        let manifest: DeploymentManifest
        do {
            manifest = try JSONDecoder().decode(DeploymentManifest.self, from: manifestBytes)
        } catch {
            throw DeploymentRefusal(.malformed, "the signed manifest is not a deployment manifest")
        }
        guard ["model", "keyset", "rollback"].contains(manifest.kind) else {
            throw DeploymentRefusal(.malformed, "kind '\(manifest.kind.prefix(32))' is not model, keyset or rollback")
        }
        guard manifest.version > lastVersion else {
            throw DeploymentRefusal(.notNewer, "version \(manifest.version) is not above \(lastVersion), the last this device accepted")
        }
        guard let expires = FleetTime.parse(manifest.expires) else { throw DeploymentRefusal(.malformed, "expires '\(manifest.expires.prefix(64))' is not an ISO 8601 time") }
        guard expires > now else { throw DeploymentRefusal(.expired, "the deployment expired at \(manifest.expires)") }
        guard targets(manifest.target) else { throw DeploymentRefusal(.wrongTarget, "target '\(manifest.target.prefix(160))' is not this device (\(device)) or its groups") }
        guard manifest.hardware == "any" || manifest.hardware == hardware else {
            throw DeploymentRefusal(.wrongHardware, "built for '\(manifest.hardware.prefix(64))'; this device is \(hardware)")
        }
        guard let needed = Self.versionParts(manifest.minAgentVersion), let have = Self.versionParts(agentVersion) else {
            throw DeploymentRefusal(.malformed, "min_agent_version '\(manifest.minAgentVersion.prefix(32))' is not a version like 1.2.3")
        }
        guard !have.lexicographicallyPrecedes(needed) else {
            throw DeploymentRefusal(.agentTooOld, "needs agent \(manifest.minAgentVersion); this is \(agentVersion)")
        }
        if manifest.kind == "rollback" {
            guard manifest.rollbackTo.map({ $0 >= 1 }) ?? true else { throw DeploymentRefusal(.malformed, "rollback_to must be a version ≥ 1") }
            return (manifest, [])
        }
        if manifest.kind == "keyset" {
            guard let keys = manifest.keys, !keys.isEmpty, keys.values.allSatisfy({ SigningKey.publicKey(base64: $0) != nil }) else {
                throw DeploymentRefusal(.malformed, "a key set must hold one or more base64 Ed25519 public keys")
            }
            return (manifest, [])
        }
        guard manifest.size >= 0, manifest.size <= maxModelBytes else {
            throw DeploymentRefusal(.oversize, "the model is \(manifest.size) bytes; this device takes at most \(maxModelBytes) (deploy.max_model_bytes)")
        }
        guard let text = envelope.model, let model = Data(base64Encoded: text) else {
            throw DeploymentRefusal(.malformed, "the deployment carries no base64 model bytes")
        }
        guard model.count == manifest.size else {
            throw DeploymentRefusal(.tampered, "the model is \(model.count) bytes; the signed manifest says \(manifest.size)")
        }
        let digest = SHA256.hash(data: model).map { String(format: "%02x", $0) }.joined()
        guard digest == manifest.sha256.lowercased() else {
            throw DeploymentRefusal(.tampered, "the model's SHA-256 is \(digest); the signed manifest says \(manifest.sha256.prefix(64))")
        }
        return (manifest, [UInt8](model))
    }

    func targets(_ target: String) -> Bool {
        if target == "all" { return true }
        if target.hasPrefix("device:") { return target.dropFirst(7) == device }
        if target.hasPrefix("group:") { return groups.contains(String(target.dropFirst(6))) }
        return false
    }

    static func versionParts(_ text: String) -> [Int]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...4).contains(parts.count) else { return nil }
        let numbers = parts.compactMap { $0.count <= 9 ? Int($0) : nil }
        guard numbers.count == parts.count, numbers.allSatisfy({ $0 >= 0 }) else { return nil }
        return numbers + [Int](repeating: 0, count: 4 - numbers.count)
    }
}
