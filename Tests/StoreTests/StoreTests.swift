import Foundation
import Store
import Testing

func temporaryState() -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("store-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

@Suite struct StoreTests {
    @Test func registryActivatesOneVersionAtATimeAndSurvivesReopening() throws {
        let dir = temporaryState()
        do {
            let db = try AgentDatabase(path: dir + "/agent.db")
            let a = try db.register(name: "m", sha256: "aa", source: "initial", precision: "int8")
            let b = try db.register(name: "m", sha256: "bb", source: "update", precision: "fp32")
            #expect(a.version == 1 && b.version == 2)
            #expect(try db.activeModel()?.version == 2)
            #expect(try db.activate(version: 1)?.active == true)
            #expect(try db.models().filter(\.active).map(\.version) == [1])
            #expect(try db.activate(version: 9) == nil)
        }
        let again = try AgentDatabase(path: dir + "/agent.db")
        #expect(try again.activeModel()?.sha256 == "aa")
        #expect(try again.referencedHashes() == ["aa", "bb"])
        #expect(FileManager.default.fileExists(atPath: dir + "/agent.db-wal"))
    }

    @Test func eventsAndFeedback() throws {
        let db = try AgentDatabase(path: temporaryState() + "/agent.db")
        for i in 0..<5 { try db.appendEvent(kind: "k", message: "m\(i)") }
        #expect(try db.events(limit: 2).map(\.message) == ["m3", "m4"])
        let r = try db.storeFeedback(inferenceId: "1-1", label: "3", input: [1, 2, 3], modelVersion: 1)
        #expect(r.count == 1)
        #expect(try db.feedbackCount() == 1)
    }

    @Test func modelFilesAreImmutableAndOrphansRemoved() throws {
        let dir = temporaryState()
        let store = try ModelStore(directory: dir + "/models")
        let p = try store.store([1, 2, 3], sha256: "abc")
        #expect(FileManager.default.contents(atPath: p) == Data([1, 2, 3]))
        _ = try store.store([9, 9], sha256: "dead")
        _ = FileManager.default.createFile(atPath: dir + "/models/.incoming-1-2", contents: Data([0]))
        let removed = try store.removeUnreferenced(keeping: ["abc"])
        #expect(Set(removed) == ["dead.safetensors", ".incoming-1-2"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/models") == ["abc.safetensors"])
    }
}
