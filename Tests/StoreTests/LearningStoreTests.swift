import Foundation
import Store
import Testing

/// The learner's tables: a local update commits all or nothing; replay rows another model wrote
/// (other widths, a label outside the classes) are set aside, never handed to training.
@Suite struct LearningStoreTests {
    func row(_ id: Int64, label: Int? = 1, inputs: Int = 4, classes: Int = 3) -> AgentDatabase.ReplayRow {
        AgentDatabase.ReplayRow(id: id, source: "feedback", label: label, group: label ?? 0, score: 0.5,
                                input: [Float](repeating: 1, count: inputs), logits: [Float](repeating: 0, count: classes), modelVersion: 1)
    }

    @Test func aLocalUpdateThatFailsMidTransactionLeavesNothing() throws {
        let db = try AgentDatabase(path: temporaryState() + "/agent.db")
        try db.register(name: "m", sha256: "a", source: "initial", precision: "int8")
        try db.applyReplay(.init(insert: [row(1)]), counters: ["seen_labelled": 1])
        try db.insertJob(id: "job", state: "running", result: "{}")
        // The replay change inserts an id that exists: the commit's last statement fails.
        #expect(throws: (any Error).self) {
            try db.commitLocalUpdate(name: "m", sha256: "b", source: "local_update:job", precision: "int8", lineage: "{}",
                                     job: ("job", "finished", { _ in "{\"done\": true}" }),
                                     replay: .init(insert: [row(2), row(1)]), counters: ["feedback_cursor": 9])
        }
        #expect(try db.models().map(\.sha256) == ["a"])
        #expect(try db.activeModel()?.sha256 == "a")
        #expect(try db.lastJob()?.state == "running")
        #expect(try db.learnerValue("feedback_cursor") == nil)
        #expect(try db.replayRows(inputs: 4, classes: 3).rows.map(\.id) == [1])
        // The same commit without the clash goes through whole.
        let v = try db.commitLocalUpdate(name: "m", sha256: "b", source: "local_update:job", precision: "int8", lineage: "{\"base\": 1}",
                                         job: ("job", "finished", { "{\"version\": \($0.version)}" }),
                                         replay: .init(insert: [row(2)], delete: [1]), counters: ["feedback_cursor": 9])
        #expect(v.version == 2 && v.active && v.lineage == "{\"base\": 1}")
        #expect(try db.lastJob()?.result == "{\"version\": 2}")
        #expect(try db.learnerValue("feedback_cursor") == 9)
        #expect(try db.replayRows(inputs: 4, classes: 3).rows.map(\.id) == [2])
    }

    @Test func rowsOfAnotherShapeOrLabelRangeAreStale() throws {
        let db = try AgentDatabase(path: temporaryState() + "/agent.db")
        try db.applyReplay(.init(insert: [row(1), row(2, inputs: 5), row(3, classes: 2), row(4, label: 7), row(5, label: nil)]))
        let (rows, stale) = try db.replayRows(inputs: 4, classes: 3)
        #expect(rows.map(\.id) == [1, 5])
        #expect(Set(stale) == [2, 3, 4])
        #expect(rows[0].input == [1, 1, 1, 1] && rows[0].logits == [0, 0, 0])
    }
}
