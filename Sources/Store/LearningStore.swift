import Foundation
import GRDB

/// The learner's tables: the replay memory, the jobs, and its counters. A local update's whole
/// effect (registry row, consumed labels, replay changes, job result) commits in one transaction.
extension AgentDatabase {
    /// One replay sample as stored: input and logits little-endian F32.
    public struct ReplayRow: Sendable, Equatable {
        public var id: Int64
        public var source: String
        public var label: Int?
        public var group: Int
        public var score: Float
        public var input: [Float]
        public var logits: [Float]
        public var modelVersion: Int?
        public init(id: Int64, source: String, label: Int?, group: Int, score: Float, input: [Float], logits: [Float], modelVersion: Int?) {
            self.id = id
            self.source = source
            self.label = label
            self.group = group
            self.score = score
            self.input = input
            self.logits = logits
            self.modelVersion = modelVersion
        }
        /// Bytes it is counted as against `replay.max_bytes`.
        public var bytes: Int { (input.count + logits.count) * 4 + AgentDatabase.rowOverhead + source.utf8.count + 40 }
    }

    /// Changes to the replay memory: rows in, ids out.
    public struct ReplayChange: Sendable {
        public var insert: [ReplayRow]
        public var delete: [Int64]
        public init(insert: [ReplayRow] = [], delete: [Int64] = []) {
            self.insert = insert
            self.delete = delete
        }
        public var isEmpty: Bool { insert.isEmpty && delete.isEmpty }
    }

    static func floats(_ d: Data) -> [Float] {
        let n = d.count / 4
        var out = [Float](repeating: 0, count: n)
        out.withUnsafeMutableBytes { dst in d.withUnsafeBytes { src in dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[0..<(n * 4)])) } }
        return out
    }

    static func blob(_ f: [Float]) -> Data { f.withUnsafeBytes { Data($0) } }

    /// Every replay sample, by id. Rows whose blobs do not have `inputs`/`classes` values (a
    /// model of another shape wrote them) are left out and returned as `stale`.
    public func replayRows(inputs: Int, classes: Int) throws -> (rows: [ReplayRow], stale: [Int64]) {
        try pool.read { db in
            var rows: [ReplayRow] = [], stale: [Int64] = []
            let cursor = try Row.fetchCursor(db, sql: "SELECT * FROM replay ORDER BY id")
            while let r = try cursor.next() {
                let input: Data = r["input"], logits: Data = r["logits"]
                let label: Int? = r["label"]
                guard input.count == inputs * 4, logits.count == classes * 4, label.map({ (0..<classes).contains($0) }) ?? true else {
                    stale.append(r["id"])
                    continue
                }
                rows.append(ReplayRow(id: r["id"], source: r["source"], label: label, group: r["grp"], score: Float(r["score"] as Double),
                                      input: Self.floats(input), logits: Self.floats(logits), modelVersion: r["model_version"]))
            }
            return (rows, stale)
        }
    }

    static func apply(_ db: Database, _ change: ReplayChange) throws {
        for id in change.delete { try db.execute(sql: "DELETE FROM replay WHERE id = ?", arguments: [id]) }
        for r in change.insert {
            try db.execute(sql: "INSERT INTO replay (id, ts, source, label, grp, score, input, logits, model_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           arguments: [r.id, now(), r.source, r.label, r.group, Double(r.score), blob(r.input), blob(r.logits), r.modelVersion])
        }
    }

    /// Applies a change and sets `counters` (the policy's counts of samples seen), together.
    public func applyReplay(_ change: ReplayChange, counters: [String: Int64] = [:]) throws {
        guard !change.isEmpty || !counters.isEmpty else { return }
        try pool.write { db in
            try Self.apply(db, change)
            for (k, v) in counters { try Self.setLearnerValue(db, "replay." + k, v) }
        }
    }

    /// Empties the replay memory and its counters and records the lineage it now belongs to.
    public func resetReplay(ids: [Int64], lineage: Int64) throws {
        try pool.write { db in
            try db.execute(sql: "DELETE FROM replay")
            try db.execute(sql: "DELETE FROM learner WHERE key LIKE 'replay.%'")
            try Self.setLearnerValue(db, "replay.lineage", lineage)
        }
    }

    /// The replay policy's saved counters (keys without their `replay.` prefix).
    public func replayCounters() throws -> [String: Int64] {
        try pool.read { db in
            var out: [String: Int64] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT key, value FROM learner WHERE key LIKE 'replay.%'") {
                let k: String = row["key"]
                out[String(k.dropFirst("replay.".count))] = row["value"]
            }
            return out
        }
    }

    public func maxReplayId() throws -> Int64 {
        try pool.read { db in try Int64.fetchOne(db, sql: "SELECT MAX(id) FROM replay") ?? 0 }
    }

    // MARK: counters

    public func learnerValue(_ key: String) throws -> Int64? {
        try pool.read { db in try Int64.fetchOne(db, sql: "SELECT value FROM learner WHERE key = ?", arguments: [key]) }
    }

    static func setLearnerValue(_ db: Database, _ key: String, _ value: Int64) throws {
        try db.execute(sql: "INSERT INTO learner (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", arguments: [key, value])
    }

    public func setLearnerValue(_ key: String, _ value: Int64) throws {
        try pool.write { db in try Self.setLearnerValue(db, key, value) }
    }

    // MARK: feedback for the learner

    /// Labelled feedback rows with an id above `after`, oldest first: the newest `limit` of them.
    public func feedback(after: Int64, limit: Int = 100_000) throws -> [(id: Int64, label: String, input: [Float])] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT id, label, input FROM feedback WHERE id > ? ORDER BY id DESC LIMIT ?", arguments: [after, limit]).reversed().map {
                (id: $0["id"], label: $0["label"], input: Self.floats($0["input"]))
            }
        }
    }

    public func maxFeedbackId() throws -> Int64 {
        try pool.read { db in try Int64.fetchOne(db, sql: "SELECT MAX(id) FROM feedback") ?? 0 }
    }

    public func feedbackCount(after: Int64) throws -> Int {
        try pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM feedback WHERE id > ?", arguments: [after]) ?? 0 }
    }

    // MARK: jobs

    public struct LearnJobRow: Sendable, Equatable {
        public var id: String
        public var started: String
        public var finished: String?
        public var state: String
        /// The job as the API shows it, JSON.
        public var result: String
    }

    public func insertJob(id: String, state: String, result: String) throws {
        try pool.write { db in
            try db.execute(sql: "INSERT INTO learn_jobs (id, started, state, result) VALUES (?, ?, ?, ?)", arguments: [id, Self.now(), state, result])
            // The last 100 jobs are kept.
            try db.execute(sql: "DELETE FROM learn_jobs WHERE id NOT IN (SELECT id FROM learn_jobs ORDER BY started DESC, id DESC LIMIT 100)")
        }
    }

    static func finishJob(_ db: Database, id: String, state: String, result: String) throws {
        try db.execute(sql: "UPDATE learn_jobs SET finished = ?, state = ?, result = ? WHERE id = ?", arguments: [now(), state, result, id])
    }

    /// Ends a job without a model change; `counters` are set in the same transaction.
    public func finishJob(id: String, state: String, result: String, counters: [String: Int64] = [:]) throws {
        try pool.write { db in
            try Self.finishJob(db, id: id, state: state, result: result)
            for (k, v) in counters { try Self.setLearnerValue(db, k, v) }
        }
    }

    public func lastJob() throws -> LearnJobRow? {
        try pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM learn_jobs ORDER BY started DESC, rowid DESC LIMIT 1").map {
                LearnJobRow(id: $0["id"], started: $0["started"], finished: $0["finished"], state: $0["state"], result: $0["result"])
            }
        }
    }

    /// Jobs a stop or crash left running become `interrupted`; returns their ids.
    public func markInterruptedJobs() throws -> [String] {
        try pool.write { db in
            let ids = try String.fetchAll(db, sql: "SELECT id FROM learn_jobs WHERE state = 'running'")
            try db.execute(sql: "UPDATE learn_jobs SET state = 'interrupted', finished = ? WHERE state = 'running'", arguments: [Self.now()])
            return ids
        }
    }

    /// A local update's commit: the new version registered and active, the job finished, the
    /// replay changes and counters applied — all or nothing.
    public func commitLocalUpdate(name: String, sha256: String, source: String, precision: String, lineage: String,
                                  job: (id: String, state: String, result: (RegisteredModel) -> String),
                                  replay: ReplayChange, counters: [String: Int64]) throws -> RegisteredModel {
        try pool.write { db in
            try db.execute(sql: "UPDATE models SET active = 0 WHERE active = 1")
            try db.execute(sql: "INSERT INTO models (name, sha256, source, precision, created, active, lineage) VALUES (?, ?, ?, ?, ?, 1, ?)",
                           arguments: [name, sha256, source, precision, Self.now(), lineage])
            let model = try Self.model(db, Int(db.lastInsertedRowID))!
            try Self.finishJob(db, id: job.id, state: job.state, result: job.result(model))
            try Self.apply(db, replay)
            for (k, v) in counters { try Self.setLearnerValue(db, k, v) }
            return model
        }
    }
}
