import Foundation
import Store
import Testing

func temporaryState() -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("store-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

extension Result {
    var failureValue: Failure? {
        if case .failure(let f) = self { return f }
        return nil
    }
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

    static let roomy = StoreWriter.Limits(feedbackMaxRows: 1000, feedbackMaxBytes: 1 << 20, eventsMaxRows: 1000, eventsMaxBytes: 1 << 20,
                                          queueCapacity: 100)

    @Test func eventsAndFeedbackGoThroughTheWriter() async throws {
        let db = try AgentDatabase(path: temporaryState() + "/agent.db")
        for i in 0..<5 { try db.appendEvent(kind: "k", message: "m\(i)") }
        #expect(try db.events(limit: 2).map(\.message) == ["m3", "m4"])
        let writer = try StoreWriter(database: db, limits: Self.roomy)
        #expect(writer.state.events.rows == 5)
        let r = try await writer.storeFeedback(AgentDatabase.Feedback(inferenceId: "ab", label: "3", input: [1, 2, 3], modelVersion: 1)).get()
        #expect(r.count == 1)
        writer.appendEvent(kind: "k", message: "m5")
        writer.close()
        #expect(try db.feedbackCount() == 1)
        #expect(writer.recentEvents.map(\.message) == ["m1", "m2", "m3", "m4", "m5"])
        #expect(try db.sizes().feedback == writer.state.feedback && db.sizes().events == writer.state.events)
        // Closed: nothing is queued any more, and a feedback says so.
        #expect(await writer.storeFeedback(AgentDatabase.Feedback(inferenceId: nil, label: "1", input: [0], modelVersion: nil)).failureValue == .closed)
    }

    /// Both tables keep at most their row and byte limits, deleting the oldest first, and count it.
    @Test func retentionDeletesTheOldestRowsPastEitherLimit() async throws {
        let db = try AgentDatabase(path: temporaryState() + "/agent.db")
        let limits = StoreWriter.Limits(feedbackMaxRows: 10, feedbackMaxBytes: 6 * 1100, eventsMaxRows: 10, eventsMaxBytes: 4096, queueCapacity: 100)
        let writer = try StoreWriter(database: db, limits: limits)
        var last: Int64 = 0
        for i in 0..<20 {
            // 256 floats = 1,024 bytes a row: the byte limit (6,600) binds before the row limit.
            last = try await writer.storeFeedback(AgentDatabase.Feedback(inferenceId: nil, label: "\(i % 10)", input: [Float](repeating: Float(i), count: 256),
                                                                        modelVersion: 1)).get().id
        }
        for i in 0..<30 { writer.appendEvent(kind: "k", message: "event \(i)") }
        writer.close()
        let s = writer.state
        #expect(s.feedback.rows == 6 && s.feedback.bytes <= 6 * 1100)
        #expect(s.feedbackEvicted == 14)
        #expect(s.events.rows == 10 && s.eventsEvicted == 20)
        #expect(try db.sizes().feedback == s.feedback && db.sizes().events == s.events)
        #expect(try db.feedbackCount() == 6)
        // The newest stayed.
        #expect(try db.events(limit: 1).first?.message == "event 29")
        #expect(last == 20)
    }

    /// A writer whose queue is full refuses at once instead of blocking the caller.
    @Test func aFullWriteQueueRefusesAtOnce() async throws {
        let db = try AgentDatabase(path: temporaryState() + "/agent.db")
        var limits = Self.roomy
        limits.queueCapacity = 1
        let writer = try StoreWriter(database: db, limits: limits)
        // Hold SQLite's write lock from another connection so the writer stalls on its first job.
        let blocker = try AgentDatabase(path: db.path)
        let held = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        Thread { try? blocker.holdWriteLock { held.signal(); release.wait() } }.start()
        await Task.detached { held.wait() }.value
        let f = AgentDatabase.Feedback(inferenceId: nil, label: "1", input: [0], modelVersion: nil)
        let results = Results()
        writer.storeFeedback(f) { results.add($0) }
        // The writer takes the first job and stalls; one more fits the queue; the next is refused.
        for _ in 0..<400 where writer.state.queued > 0 { try await Task.sleep(nanoseconds: 5_000_000) }
        #expect(writer.state.queued == 0)
        writer.storeFeedback(f) { results.add($0) }
        let refusal = Results()
        writer.storeFeedback(f) { refusal.add($0) }
        #expect(refusal.all.count == 1 && refusal.all.first?.failureValue == .queueFull)
        release.signal()
        writer.close()
        #expect(results.all.count == 2 && results.all.allSatisfy { (try? $0.get()) != nil })
    }

    /// A file that is not a database is moved aside with its -wal and -shm, and a new one made.
    @Test(arguments: ["not a database", "truncated"])
    func aDamagedDatabaseIsMovedAside(_ damage: String) throws {
        let dir = temporaryState()
        let path = dir + "/agent.db"
        if damage == "truncated" {
            let db = try AgentDatabase(path: path)
            for i in 0..<2000 { try db.appendEvent(kind: "k", message: String(repeating: "x", count: 200) + "\(i)") }
            try db.checkpoint()
        }
        var bytes = (try? Data(contentsOf: URL(fileURLWithPath: path))) ?? Data()
        if damage == "truncated" {
            // Keep the header page, scramble the rest: opens, then fails its check.
            for i in stride(from: 4096, to: bytes.count, by: 7) { bytes[i] ^= 0x5A }
        } else {
            bytes = Data("this is not a database file at all, just text that is long enough".utf8)
        }
        try bytes.write(to: URL(fileURLWithPath: path))
        try? FileManager.default.removeItem(atPath: path + "-wal")
        try? FileManager.default.removeItem(atPath: path + "-shm")
        let (db, aside) = try AgentDatabase.openRecovering(path: path)
        let moved = try #require(aside)
        #expect(moved.hasPrefix(path + ".corrupt-"))
        // What was there is kept for inspection (opening it may have added a page of its own).
        #expect((FileManager.default.contents(atPath: moved)?.count ?? 0) >= bytes.count)
        #expect(try db.models().isEmpty)
        #expect(try db.events(limit: 10).isEmpty)
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

final class Results: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [StoreWriter.FeedbackResult] = []
    func add(_ r: StoreWriter.FeedbackResult) { lock.lock(); values.append(r); lock.unlock() }
    var all: [StoreWriter.FeedbackResult] { lock.lock(); defer { lock.unlock() }; return values }
}
