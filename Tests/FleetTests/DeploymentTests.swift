import Crypto
import Foundation
import Testing

import Fleet

@Suite struct DeploymentVerifierTests {
    static let key = SigningKey(name: "ops", privateKey: Curve25519.Signing.PrivateKey())
    static let model: [UInt8] = Array("a model file's bytes".utf8)

    static func manifest(version: Int = 5, target: String = "device:dev1", hardware: String = "any", minAgent: String = "0.1.0",
                         expires: Date = Date().addingTimeInterval(3600), bytes: [UInt8] = model) -> DeploymentManifest {
        DeploymentManifest(deployment: "d1", version: version, name: "m", sha256: SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined(),
                           size: bytes.count, target: target, hardware: hardware, minAgentVersion: minAgent, expires: FleetTime.string(expires))
    }

    static func verifier(lastVersion: Int = 4, maxBytes: Int = 1 << 20, keys: [String: Curve25519.Signing.PublicKey]? = nil) -> DeploymentVerifier {
        DeploymentVerifier(trusted: keys ?? ["ops": key.privateKey.publicKey], lastVersion: lastVersion, device: "dev1", groups: ["north"],
                           hardware: "x86_64", agentVersion: "0.1.0", maxModelBytes: maxBytes)
    }

    static func payload(_ e: DeploymentEnvelope) -> [UInt8] { [UInt8](try! JSONEncoder().encode(e)) }

    func refusal(_ payload: [UInt8], _ v: DeploymentVerifier = verifier()) -> DeploymentRefusal.Code? {
        do {
            _ = try v.verify(payload)
            return nil
        } catch {
            return error.code
        }
    }

    @Test func aSignedDeploymentForThisDeviceVerifies() throws {
        let e = try DeploymentEnvelope.signed(Self.manifest(), model: Self.model, key: Self.key)
        let (m, bytes) = try Self.verifier().verify(Self.payload(e))
        #expect(m.version == 5)
        #expect(bytes == Self.model)
        // Group and fleet-wide targets too.
        for target in ["group:north", "all"] {
            let g = try DeploymentEnvelope.signed(Self.manifest(target: target), model: Self.model, key: Self.key)
            #expect(refusal(Self.payload(g)) == nil)
        }
    }

    @Test func everyRefusalHasItsCode() throws {
        let good = try DeploymentEnvelope.signed(Self.manifest(), model: Self.model, key: Self.key)
        var unsigned = good
        unsigned.signature = nil
        #expect(refusal(Self.payload(unsigned)) == .unsigned)
        var unknown = good
        unknown.key = "someone"
        #expect(refusal(Self.payload(unknown)) == .unknownKey)
        let stranger = SigningKey(name: "ops", privateKey: Curve25519.Signing.PrivateKey())
        #expect(refusal(Self.payload(try DeploymentEnvelope.signed(Self.manifest(), model: Self.model, key: stranger))) == .badSignature)
        // The manifest changed after signing: one byte of its JSON.
        var tamperedManifest = good
        var bytes = [UInt8](Data(base64Encoded: good.manifest)!)
        let i = bytes.firstIndex(of: UInt8(ascii: "5"))!
        bytes[i] = UInt8(ascii: "9")
        tamperedManifest.manifest = Data(bytes).base64EncodedString()
        #expect(refusal(Self.payload(tamperedManifest)) == .badSignature)
        // The model bytes changed: same size, and another size.
        var tamperedModel = good
        var model = Self.model
        model[0] ^= 1
        tamperedModel.model = Data(model).base64EncodedString()
        #expect(refusal(Self.payload(tamperedModel)) == .tampered)
        tamperedModel.model = Data(Self.model + [0]).base64EncodedString()
        #expect(refusal(Self.payload(tamperedModel)) == .tampered)
        #expect(refusal(Self.payload(good), Self.verifier(lastVersion: 5)) == .notNewer)
        #expect(refusal(Self.payload(good), Self.verifier(lastVersion: 6)) == .notNewer)
        let expired = try DeploymentEnvelope.signed(Self.manifest(expires: Date().addingTimeInterval(-1)), model: Self.model, key: Self.key)
        #expect(refusal(Self.payload(expired)) == .expired)
        for target in ["device:dev2", "group:south", "device:", "dev1", "everyone"] {
            let other = try DeploymentEnvelope.signed(Self.manifest(target: target), model: Self.model, key: Self.key)
            #expect(refusal(Self.payload(other)) == .wrongTarget, "\(target)")
        }
        let arm = try DeploymentEnvelope.signed(Self.manifest(hardware: "aarch64"), model: Self.model, key: Self.key)
        #expect(refusal(Self.payload(arm)) == .wrongHardware)
        let newer = try DeploymentEnvelope.signed(Self.manifest(minAgent: "0.2"), model: Self.model, key: Self.key)
        #expect(refusal(Self.payload(newer)) == .agentTooOld)
        #expect(refusal(Self.payload(good), Self.verifier(maxBytes: 4)) == .oversize)
        var noModel = good
        noModel.model = nil
        #expect(refusal(Self.payload(noModel)) == .malformed)
    }

    @Test func hostilePayloadsAreMalformedNotCrashes() throws {
        let good = try DeploymentEnvelope.signed(Self.manifest(), model: Self.model, key: Self.key)
        let hostile: [[UInt8]] = [
            [], Array("null".utf8), Array("{}".utf8), Array("[1,2]".utf8), [0xFF, 0xFE, 0x00],
            Array(#"{"msg_id":"x","ts":"t","manifest":"!!!","signature":"AA==","key":"ops"}"#.utf8),
            Array(#"{"msg_id":1e999,"ts":"t","manifest":""}"#.utf8),
            Array(String(repeating: "[", count: 100_000).utf8),
        ]
        for p in hostile { #expect(refusal(p) != nil) }
        // A valid signature over bytes that are not a manifest.
        let junk = Data("not json".utf8)
        var e = good
        e.manifest = junk.base64EncodedString()
        e.signature = Data(try Self.key.privateKey.signature(for: junk)).base64EncodedString()
        #expect(refusal(Self.payload(e)) == .malformed)
        // Signed manifests with hostile values.
        for m in [Self.manifest(minAgent: "1.x"), Self.manifest(minAgent: "99999999999999999999"),
                  DeploymentManifest(deployment: "d", version: Int.max, name: "m", sha256: "", size: -1, target: "all", expires: "soon")] {
            #expect(refusal(Self.payload(try DeploymentEnvelope.signed(m, model: Self.model, key: Self.key))) != nil)
        }
    }

    @Test func aKeySetMustHoldKeys() throws {
        var m = Self.manifest()
        m.kind = "keyset"
        m.keys = ["new": Data(Curve25519.Signing.PrivateKey().publicKey.rawRepresentation).base64EncodedString()]
        #expect(refusal(Self.payload(try DeploymentEnvelope.signed(m, model: nil, key: Self.key))) == nil)
        m.keys = ["bad": "AAAA"]
        #expect(refusal(Self.payload(try DeploymentEnvelope.signed(m, model: nil, key: Self.key))) == .malformed)
        m.kind = "firmware"
        #expect(refusal(Self.payload(try DeploymentEnvelope.signed(m, model: nil, key: Self.key))) == .malformed)
    }

    @Test func keyFilesRoundTripAndBadOnesAreNamed() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("keys-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let k = Curve25519.Signing.PrivateKey()
        try k.rawRepresentation.base64EncodedString().write(toFile: dir + "/ops.key", atomically: true, encoding: .utf8)
        try k.publicKey.rawRepresentation.base64EncodedString().write(toFile: dir + "/ops.pub", atomically: true, encoding: .utf8)
        #expect(try SigningKey.load(path: dir + "/ops.key").name == "ops")
        let keys = try SigningKey.loadPublicKeys(paths: [dir + "/ops.pub"])
        #expect(keys["ops"]?.rawRepresentation == k.publicKey.rawRepresentation)
        try "garbage".write(toFile: dir + "/bad.pub", atomically: true, encoding: .utf8)
        #expect(throws: MQTTError.self) { try SigningKey.loadPublicKeys(paths: [dir + "/bad.pub"]) }
        #expect(throws: MQTTError.self) { try SigningKey.loadPublicKeys(paths: [dir + "/missing.pub"]) }
    }
}

@Suite struct TopicTests {
    let topics = FleetTopics(prefix: "edge", fleet: "f", device: "d1", groups: ["north", "cams"])

    @Test func addressesAndClassification() {
        #expect(topics.status == "edge/f/d1/status")
        #expect(topics.classify("edge/f/d1/cmd/status") == .command(verb: "status"))
        #expect(topics.classify("edge/f/all/cmd/learn") == .command(verb: "learn"))
        #expect(topics.classify("edge/f/group/cams/model/deploy") == .deploy)
        #expect(topics.classify("edge/f/group/south/model/deploy") == nil)
        #expect(topics.classify("edge/f/d2/cmd/status") == nil)
        #expect(topics.classify("edge/f/d1/cmd/status/reply") == nil)
        #expect(topics.classify("edge/f/d1/cmd/") == nil)
        #expect(topics.classify("edge/f/d1") == nil)
        #expect(topics.subscriptions.count == 8)
    }

    @Test func brokerURLs() throws {
        #expect(try MQTTSettings.parseBroker("mqtt://127.0.0.1:1884") == ("127.0.0.1", 1884, false))
        #expect(try MQTTSettings.parseBroker("mqtts://broker.example") == ("broker.example", 8883, true))
        #expect(try MQTTSettings.parseBroker("mqtt://[::1]:1883") == ("::1", 1883, false))
        for bad in ["http://x", "mqtt://", "mqtt://host:0", "mqtt://host:99999", "mqtt://host:x", "mqtt://u@host", "mqtt://a/b"] {
            #expect(throws: MQTTError.self, "\(bad)") { try MQTTSettings.parseBroker(bad) }
        }
    }

    @Test func backoffIsJitteredAndBounded() {
        let delays = (0..<200).map { _ in MQTTClient.backoffDelay(attempt: 10, initial: 0.5, max: 30) }
        #expect(delays.allSatisfy { $0 >= 0 && $0 <= 30 })
        // Full jitter: a fleet that lost its broker does not come back in lockstep.
        #expect(Set(delays.map { Int($0) }).count > 10)
        #expect((0..<100).allSatisfy { _ in MQTTClient.backoffDelay(attempt: 0, initial: 0.5, max: 30) <= 0.5 })
        #expect(MQTTClient.backoffDelay(attempt: Int.max, initial: 0.5, max: 30) <= 30)
    }

    @Test func timesParse() {
        #expect(FleetTime.parse(FleetTime.string()) != nil)
        #expect(FleetTime.parse("2026-12-02T10:00:00Z") != nil)
        #expect(FleetTime.parse("yesterday") == nil)
        #expect(FleetTime.parse(String(repeating: "9", count: 10_000)) == nil)
        #expect(FleetTime.messageId().count == 32)
    }
}
