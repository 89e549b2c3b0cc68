import AgentAPI
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// kill -9 in the middle of durable work: feedback being committed and rollbacks switching the
/// active version. After a restart nothing acknowledged is lost, the database needs no recovery,
/// exactly one version is active and it is the one served.
@Suite(.serialized) struct CrashTests {
    final class Acknowledged: @unchecked Sendable {
        private let lock = NSLock()
        private var n = 0
        func add() { lock.lock(); n += 1; lock.unlock() }
        var count: Int { lock.lock(); defer { lock.unlock() }; return n }
    }

    @Test(arguments: [150, 400, 900])
    func killNineDuringFeedbackAndRollbacksLosesNothingAcknowledged(_ afterMs: Int) throws {
        let dir = temporaryDirectory("kill9")
        let second = Agentctl.trainedModel(name: "digits-tiny", arch: "mlp:64-16-10", epochs: 1)
        var agent = try AgentdProcess(dir: dir)
        try #require(agent.waitForNotification("READY=1") != nil, "\(agent.log)")
        agent.signal(SIGTERM)
        #expect(agent.waitForExit() == 0)
        agent = try AgentdProcess(model: second, dir: dir)
        try #require(agent.waitForNotification("READY=1") != nil, "\(agent.log)")
        try #require(try agent.client.models().models.count == 2)

        let acknowledged = Acknowledged()
        let client = agent.client
        let body = try JSONEncoder().encode(FeedbackRequest(input: AgentdTests.digitRow, label: "0"))
        let stop = Date(timeIntervalSinceNow: 5)
        let writers = Concurrent(6) {
            guard let c = try? client.connect() else { return nil }
            while Date() < stop {
                guard let r = try? c.send("POST", "/v1/feedback", body: body) else { break }
                if r.status == 200 { acknowledged.add() }
            }
            return nil
        }
        let rollbacks = Concurrent(1) {
            var version = 1
            while Date() < stop {
                guard (try? client.send("POST", "/v1/models/rollback", body: Data(#"{"version": \#(version)}"#.utf8))) != nil else { break }
                version = 3 - version
            }
            return nil
        }
        usleep(useconds_t(afterMs * 1000))
        agent.signal(SIGKILL)
        _ = agent.waitForExit()
        _ = writers.wait()
        _ = rollbacks.wait()
        let acked = acknowledged.count
        #expect(acked > 0, "no feedback was acknowledged before the kill")

        agent = try AgentdProcess(model: second, dir: dir)
        try #require(agent.waitForNotification("READY=1") != nil, "\(agent.log)")
        let events = try agent.client.events(limit: 1000).events.map(\.kind)
        #expect(!events.contains("database_recovered") && !events.contains("registry_rebuilt"), "\(events)")
        let aside = try FileManager.default.contentsOfDirectory(atPath: dir + "/state").filter { $0.hasPrefix("agent.db.corrupt-") }
        #expect(aside.isEmpty)
        let status = try agent.client.status()
        #expect((status.store?.feedbackRows ?? 0) >= acked, "acknowledged \(acked), stored \(status.store?.feedbackRows ?? 0)")
        let models = try agent.client.models().models
        #expect(models.map(\.version) == [1, 2] && models.filter(\.active).count == 1)
        let served = try agent.client.infer(InferRequest(inputs: [AgentdTests.digitRow])).model.version
        #expect(models.first(where: \.active)?.version == served)
        agent.signal(SIGTERM)
        #expect(agent.waitForExit() == 0)
    }
}
