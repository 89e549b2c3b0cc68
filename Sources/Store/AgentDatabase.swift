import Foundation
import GRDB

/// A registered model version: the registry row is the single commit point of a model swap.
public struct RegisteredModel: Equatable, Sendable {
    /// Registry version, 1, 2, … in registration order.
    public var version: Int
    public var name: String
    public var sha256: String
    /// Where it came from: "initial", "rollback", a file path, "mqtt:…" later.
    public var source: String
    public var precision: String
    public var created: String
    public var active: Bool
    /// JSON: where a local update came from (`{"base", "kind", "labels", "steps"}`), else nil.
    public var lineage: String? = nil
}

public struct StoredEvent: Equatable, Sendable {
    public var id: Int64
    public var ts: String
    public var kind: String
    public var message: String
}

/// A database failure as a client may be told it: what went wrong, never SQL text.
public enum StoreError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The disk (or the file size limit) is full.
    case full
    /// The file is not a database or is damaged.
    case corrupt
    /// Another process holds the database locked.
    case busy
    /// A read or write of the file failed.
    case io
    /// The writer's queue is full (store.write_queue).
    case queueFull
    /// agentd is stopping; the write was not made.
    case closed
    case other(code: Int32)

    /// The store error `error` is, or nil when it did not come from the database.
    public static func from(_ error: Error) -> StoreError? {
        if let e = error as? StoreError { return e }
        guard error is DatabaseError else { return nil }
        return StoreError(error)
    }

    public init(_ error: Error) {
        if let e = error as? StoreError { self = e; return }
        guard let e = error as? DatabaseError else { self = .other(code: -1); return }
        switch e.resultCode {
        case .SQLITE_FULL: self = .full
        case .SQLITE_CORRUPT, .SQLITE_NOTADB: self = .corrupt
        case .SQLITE_BUSY, .SQLITE_LOCKED: self = .busy
        // A write past RLIMIT_FSIZE (EFBIG) comes back as an I/O error, ENOSPC as SQLITE_FULL.
        case .SQLITE_IOERR, .SQLITE_CANTOPEN, .SQLITE_READONLY, .SQLITE_PERM: self = .io
        default: self = .other(code: e.resultCode.rawValue)
        }
    }

    public var description: String {
        switch self {
        case .full: "the disk holding agentd's database is full"
        case .corrupt: "agentd's database file is damaged"
        case .busy: "agentd's database is locked by another process"
        case .io: "agentd could not read or write its database file (disk full, file size limit or I/O error)"
        case .queueFull: "too many writes are waiting for agentd's database (store.write_queue)"
        case .closed: "agentd is stopping"
        case .other(let code): "agentd's database failed (SQLite code \(code))"
        }
    }
}

/// agentd's SQLite database (WAL) in the state directory: model registry, event log, labelled
/// feedback samples. Writes are short transactions; the inference hot path never touches it.
public final class AgentDatabase: Sendable {
    public let path: String
    let pool: DatabasePool

    public init(path: String) throws {
        self.path = path
        var config = Configuration()
        config.busyMode = .timeout(5)
        config.label = "agent.db"
        pool = try DatabasePool(path: path, configuration: config)
        try Self.migrator.migrate(pool)
        // A damaged page elsewhere would fail later, mid-request; find it now.
        let check = try pool.read { db in try String.fetchAll(db, sql: "PRAGMA quick_check") }
        guard check == ["ok"] else { throw DatabaseError(resultCode: .SQLITE_CORRUPT, message: check.prefix(3).joined(separator: "; ")) }
    }

    /// Opens the database; one that is not a database or is damaged is moved aside to
    /// `agent.db.corrupt-<time>` (with its -wal and -shm) and a new one is made. Returns the
    /// name it was moved to, if it was.
    public static func openRecovering(path: String) throws -> (AgentDatabase, movedAside: String?) {
        do {
            return (try AgentDatabase(path: path), nil)
        } catch let e as DatabaseError where e.resultCode == .SQLITE_NOTADB || e.resultCode == .SQLITE_CORRUPT {
            let f = ISO8601DateFormatter()
            f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            var aside = "\(path).corrupt-" + f.string(from: Date()).replacingOccurrences(of: ":", with: "")
            if FileManager.default.fileExists(atPath: aside) { aside += "-\(UInt32.random(in: 0...UInt32.max))" }
            // -wal and -shm first: an old WAL left beside a fresh database would be replayed into it.
            for suffix in ["-wal", "-shm", ""] where FileManager.default.fileExists(atPath: path + suffix) {
                guard rename(path + suffix, aside + suffix) == 0 else {
                    throw StoreError.io
                }
            }
            let directory = (path as NSString).deletingLastPathComponent
            let fd = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if fd >= 0 { fsync(fd); close(fd) }
            return (try AgentDatabase(path: path), aside)
        }
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1: registry, events, feedback") { db in
            try db.create(table: "models") { t in
                t.autoIncrementedPrimaryKey("version")
                t.column("name", .text).notNull()
                t.column("sha256", .text).notNull()
                t.column("source", .text).notNull()
                t.column("precision", .text).notNull()
                t.column("created", .text).notNull()
                t.column("active", .boolean).notNull().defaults(to: false)
            }
            try db.create(table: "events") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("ts", .text).notNull()
                t.column("kind", .text).notNull()
                t.column("message", .text).notNull()
            }
            try db.create(table: "feedback") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("ts", .text).notNull()
                t.column("inference_id", .text)
                t.column("label", .text).notNull()
                t.column("input", .blob).notNull()
                t.column("model_version", .integer)
            }
        }
        m.registerMigration("v2: replay memory, learning jobs, lineage") { db in
            try db.alter(table: "models") { t in t.add(column: "lineage", .text) }
            try db.create(table: "replay") { t in
                t.primaryKey("id", .integer)
                t.column("ts", .text).notNull()
                t.column("source", .text).notNull()
                t.column("label", .integer)
                t.column("grp", .integer).notNull()
                t.column("score", .double).notNull()
                t.column("input", .blob).notNull()
                t.column("logits", .blob).notNull()
                t.column("model_version", .integer)
            }
            try db.create(table: "learn_jobs") { t in
                t.primaryKey("id", .text)
                t.column("started", .text).notNull()
                t.column("finished", .text)
                t.column("state", .text).notNull()
                t.column("result", .text).notNull()
            }
            try db.create(table: "learner") { t in
                t.primaryKey("key", .text)
                t.column("value", .integer).notNull()
            }
        }
        registerFleetMigration(&m)
        return m
    }

    /// The timestamp every stored row carries (ISO 8601, milliseconds, UTC).
    public static func now() -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: Date())
    }

    // MARK: registry

    /// Registers a stored model file and makes it the active version, in one transaction.
    @discardableResult
    public func register(name: String, sha256: String, source: String, precision: String, activate: Bool = true) throws -> RegisteredModel {
        try pool.write { db in
            if activate { try db.execute(sql: "UPDATE models SET active = 0 WHERE active = 1") }
            try db.execute(sql: "INSERT INTO models (name, sha256, source, precision, created, active) VALUES (?, ?, ?, ?, ?, ?)",
                           arguments: [name, sha256, source, precision, Self.now(), activate])
            let version = Int(db.lastInsertedRowID)
            return try Self.model(db, version)!
        }
    }

    /// Registers recovered files in one transaction (a crash leaves all or none of them), making
    /// the one with `activeSha256` active.
    public func registerRecovered(_ files: [(name: String, sha256: String, source: String, precision: String)], activeSha256: String) throws -> [RegisteredModel] {
        try pool.write { db in
            try db.execute(sql: "UPDATE models SET active = 0 WHERE active = 1")
            return try files.map { f in
                try db.execute(sql: "INSERT INTO models (name, sha256, source, precision, created, active) VALUES (?, ?, ?, ?, ?, ?)",
                               arguments: [f.name, f.sha256, f.source, f.precision, Self.now(), f.sha256 == activeSha256])
                return try Self.model(db, Int(db.lastInsertedRowID))!
            }
        }
    }

    public func activate(version: Int) throws -> RegisteredModel? {
        try pool.write { db in
            guard try Self.model(db, version) != nil else { return nil }
            try db.execute(sql: "UPDATE models SET active = (version = ?)", arguments: [version])
            return try Self.model(db, version)
        }
    }

    public func activeModel() throws -> RegisteredModel? {
        try pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM models WHERE active = 1").map(Self.decode)
        }
    }

    public func models() throws -> [RegisteredModel] {
        try pool.read { db in try Row.fetchAll(db, sql: "SELECT * FROM models ORDER BY version").map(Self.decode) }
    }

    public func referencedHashes() throws -> Set<String> {
        try pool.read { db in Set(try String.fetchAll(db, sql: "SELECT DISTINCT sha256 FROM models")) }
    }

    static func model(_ db: Database, _ version: Int) throws -> RegisteredModel? {
        try Row.fetchOne(db, sql: "SELECT * FROM models WHERE version = ?", arguments: [version]).map(decode)
    }

    static func decode(_ row: Row) -> RegisteredModel {
        RegisteredModel(version: row["version"], name: row["name"], sha256: row["sha256"], source: row["source"],
                        precision: row["precision"], created: row["created"], active: row["active"], lineage: row["lineage"])
    }

    // MARK: events

    @discardableResult
    public func appendEvent(kind: String, message: String) throws -> Int64 {
        try pool.write { db in try Self.insertEvent(db, StoredEvent(id: 0, ts: Self.now(), kind: kind, message: message)) }
    }

    static func insertEvent(_ db: Database, _ e: StoredEvent) throws -> Int64 {
        try db.execute(sql: "INSERT INTO events (ts, kind, message) VALUES (?, ?, ?)", arguments: [e.ts, e.kind, e.message])
        return db.lastInsertedRowID
    }

    /// Bytes a row is counted as, for retention: its text and blob lengths plus a fixed overhead.
    static let rowOverhead = 32
    // length() of TEXT counts characters; as a BLOB it counts the UTF-8 bytes the writer counts.
    static let eventBytesSQL = "length(CAST(ts AS BLOB)) + length(CAST(kind AS BLOB)) + length(CAST(message AS BLOB)) + \(rowOverhead)"
    static let feedbackBytesSQL =
        "length(CAST(ts AS BLOB)) + length(CAST(label AS BLOB)) + length(input) + ifnull(length(CAST(inference_id AS BLOB)), 0) + \(rowOverhead)"

    /// Rows and bytes of a bounded table, read once at start (then kept by the writer).
    public struct TableSize: Equatable, Sendable {
        public var rows: Int
        public var bytes: Int
    }

    public func sizes() throws -> (events: TableSize, feedback: TableSize) {
        try pool.read { db in
            func size(_ table: String, _ bytes: String) throws -> TableSize {
                let row = try Row.fetchOne(db, sql: "SELECT COUNT(*), COALESCE(SUM(\(bytes)), 0) FROM \(table)")!
                return TableSize(rows: row[0], bytes: row[1])
            }
            return (try size("events", Self.eventBytesSQL), try size("feedback", Self.feedbackBytesSQL))
        }
    }

    /// Deletes the oldest rows of `table` until it holds at most `maxRows` and `maxBytes`;
    /// returns the new size and how many rows went.
    static func trim(_ db: Database, table: String, bytesSQL: String, size: TableSize, maxRows: Int, maxBytes: Int) throws -> (TableSize, Int) {
        guard size.rows > maxRows || size.bytes > maxBytes else { return (size, 0) }
        var rows = size.rows, bytes = size.bytes, lastId: Int64 = -1, removed = 0
        let cursor = try Row.fetchCursor(db, sql: "SELECT id, \(bytesSQL) FROM \(table) ORDER BY id")
        while rows > maxRows || bytes > maxBytes, let row = try cursor.next() {
            lastId = row[0]
            bytes -= row[1] as Int
            rows -= 1
            removed += 1
        }
        if lastId >= 0 { try db.execute(sql: "DELETE FROM \(table) WHERE id <= ?", arguments: [lastId]) }
        return (TableSize(rows: rows, bytes: bytes), removed)
    }

    /// The newest `limit` events, oldest first.
    public func events(limit: Int) throws -> [StoredEvent] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM (SELECT * FROM events ORDER BY id DESC LIMIT ?) ORDER BY id", arguments: [limit]).map {
                StoredEvent(id: $0["id"], ts: $0["ts"], kind: $0["kind"], message: $0["message"])
            }
        }
    }

    // MARK: feedback

    /// A labelled sample for the learner.
    public struct Feedback: Sendable {
        public var inferenceId: String?
        public var label: String
        public var input: [Float]
        public var modelVersion: Int?
        public init(inferenceId: String?, label: String, input: [Float], modelVersion: Int?) {
            self.inferenceId = inferenceId
            self.label = label
            self.input = input
            self.modelVersion = modelVersion
        }
    }

    /// Inserts a sample (input as little-endian F32) and returns its row id.
    static func insertFeedback(_ db: Database, _ f: Feedback, ts: String) throws -> Int64 {
        let blob = f.input.withUnsafeBytes { Data($0) }
        try db.execute(sql: "INSERT INTO feedback (ts, inference_id, label, input, model_version) VALUES (?, ?, ?, ?, ?)",
                       arguments: [ts, f.inferenceId, f.label, blob, f.modelVersion])
        return db.lastInsertedRowID
    }

    /// Bytes `f` is counted as (`feedbackBytesSQL` on its row).
    static func feedbackBytes(_ f: Feedback, ts: String) -> Int {
        ts.utf8.count + f.label.utf8.count + f.input.count * 4 + (f.inferenceId?.utf8.count ?? 0) + rowOverhead
    }

    static func eventBytes(_ e: StoredEvent) -> Int { e.ts.utf8.count + e.kind.utf8.count + e.message.utf8.count + rowOverhead }

    /// Copies the WAL into the main file (tests and backups read a whole file).
    public func checkpoint() throws {
        try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE)") }
    }

    /// Holds SQLite's write lock while `body` runs (a stand-in for another process writing).
    public func holdWriteLock(_ body: () -> Void) throws {
        try pool.writeWithoutTransaction { db in
            try db.execute(sql: "BEGIN IMMEDIATE")
            body()
            try db.execute(sql: "ROLLBACK")
        }
    }

    public func feedbackCount() throws -> Int {
        try pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM feedback") ?? 0 }
    }
}
