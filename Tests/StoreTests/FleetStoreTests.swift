import Foundation
import Store
import Testing

/// The fleet's tables: every event enters the outbox with it; the bound drops telemetry before
/// events and counts the drops; a command is claimed once; the deployment counter only grows.
@Suite struct FleetStoreTests {
    @Test func everyEventIsQueuedInTheSameTransaction() throws {
        let db = try AgentDatabase(path: temporaryState() + "/agent.db")
        let id = try db.appendEvent(kind: "started", message: "agentd \"0.1\" \u{1F600} started")
        let rows = try db.outboxPending(after: 0, limit: 10)
        #expect(rows.count == 1 && rows[0].kind == "events")
        let json = try JSONSerialization.jsonObject(with: Data(rows[0].payload)) as? [String: Any]
        #expect(json?["id"] as? Int64 == id && json?["kind"] as? String == "started")
        #expect(json?["message"] as? String == "agentd \"0.1\" \u{1F600} started")
        #expect((json?["msg_id"] as? String)?.count == 32 && json?["ts"] != nil)
        // The msg_id is fixed in the row: a re-send carries the same one.
        #expect(try db.outboxPending(after: 0, limit: 10)[0].payload == rows[0].payload)
    }

    @Test func theBoundDropsTelemetryFirstAndCountsDrops() throws {
        let db = try AgentDatabase(path: temporaryState() + "/agent.db")
        let payload = [UInt8](repeating: 0x41, count: 968)  // 1000 bytes a row with the overhead
        try db.appendEvent(kind: "e1", message: "first")
        for _ in 0..<10 { try db.outboxAppend(kind: "telemetry", payload: payload) }
        try db.appendEvent(kind: "e2", message: "second")
        let before = try db.outboxSize()
        #expect(before.rows == 12)
        // Room for the two events and three telemetry rows: the seven oldest telemetry rows go.
        let dropped = try db.outboxTrim(maxBytes: before.bytes - 7000)
        #expect(dropped == 7)
        let kinds = try db.outboxPending(after: 0, limit: 100).map(\.kind)
        #expect(kinds.filter { $0 == "events" }.count == 2 && kinds.filter { $0 == "telemetry" }.count == 3)
        // With no telemetry left, events go oldest first.
        #expect(try db.outboxTrim(maxBytes: 1) == 5)
        #expect(try db.outboxSize().rows == 0)
        #expect(try db.fleetValue(AgentDatabase.outboxDroppedKey) == "12")
        #expect(try db.outboxTrim(maxBytes: 1) == 0)
    }

    @Test func aCommandIsClaimedOnceAndItsReplyKept() throws {
        let db = try AgentDatabase(path: temporaryState() + "/agent.db")
        #expect(try db.claimCommand(msgId: "a", verb: "learn") == .new)
        #expect(try db.claimCommand(msgId: "a", verb: "learn") == .interrupted)
        try db.recordReply(msgId: "a", reply: Array("{\"status\":\"ok\"}".utf8))
        #expect(try db.claimCommand(msgId: "a", verb: "learn") == .answered(Array("{\"status\":\"ok\"}".utf8)))
        // Only the newest `keep` are remembered.
        for i in 0..<5 { _ = try db.claimCommand(msgId: "m\(i)", verb: "status", keep: 3) }
        #expect(try db.claimCommand(msgId: "m4", verb: "status", keep: 3) == .interrupted)
        #expect(try db.claimCommand(msgId: "a", verb: "learn", keep: 3) == .new)
    }

    @Test func theDeploymentCounterOnlyGrowsAndSurvivesReopening() throws {
        let path = temporaryState() + "/agent.db"
        do {
            let db = try AgentDatabase(path: path)
            #expect(try db.advanceDeployVersion(to: 5, extra: ["trusted_keys": "{}"]))
            #expect(try !db.advanceDeployVersion(to: 5))
            #expect(try !db.advanceDeployVersion(to: 4, extra: ["trusted_keys": "changed"]))
            #expect(try db.fleetValue("trusted_keys") == "{}")
        }
        let reopened = try AgentDatabase(path: path)
        #expect(try reopened.fleetValue(AgentDatabase.deployVersionKey) == "5")
        #expect(try reopened.advanceDeployVersion(to: 6))
    }

    @Test func aDeploymentsOutcomeClearsItsPendingRecordInOneTransaction() throws {
        let db = try AgentDatabase(path: temporaryState() + "/agent.db")
        #expect(try db.advanceDeployVersion(to: 3, extra: [AgentDatabase.deployPendingKey: "{\"deployment\":\"d\",\"version\":3}"]))
        #expect(try db.fleetValue(AgentDatabase.deployPendingKey) != nil)
        let before = try db.outboxSize().rows
        // Another message's outcome (a refusal while this deployment runs) leaves the record alone.
        try db.finishDeployment(result: Array("{}".utf8), line: "x: refused", lineKey: "last_deployment", pending: nil)
        try db.finishDeployment(result: Array("{}".utf8), line: "y: refused", lineKey: "last_deployment", pending: "{}")
        #expect(try db.fleetValue(AgentDatabase.deployPendingKey) != nil)
        try db.finishDeployment(result: Array("{}".utf8), line: "d v3: applied", lineKey: "last_deployment",
                                pending: "{\"deployment\":\"d\",\"version\":3}")
        #expect(try db.fleetValue(AgentDatabase.deployPendingKey) == nil)
        #expect(try db.fleetValue("last_deployment") == "d v3: applied")
        let rows = try db.outboxPending(after: 0, limit: 100)
        #expect(rows.count == before + 3 && rows.last?.kind == "model/deploy/result")
    }
}
