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
}

public struct StoredEvent: Equatable, Sendable {
    public var id: Int64
    public var ts: String
    public var kind: String
    public var message: String
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
        return m
    }

    static func now() -> String {
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
                        precision: row["precision"], created: row["created"], active: row["active"])
    }

    // MARK: events

    @discardableResult
    public func appendEvent(kind: String, message: String) throws -> Int64 {
        try pool.write { db in
            try db.execute(sql: "INSERT INTO events (ts, kind, message) VALUES (?, ?, ?)", arguments: [Self.now(), kind, message])
            return db.lastInsertedRowID
        }
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

    /// Stores a labelled sample (input as little-endian F32) for the learner.
    public func storeFeedback(inferenceId: String?, label: String, input: [Float], modelVersion: Int?) throws -> (id: Int64, count: Int) {
        let blob = input.withUnsafeBytes { Data($0) }
        return try pool.write { db in
            try db.execute(sql: "INSERT INTO feedback (ts, inference_id, label, input, model_version) VALUES (?, ?, ?, ?, ?)",
                           arguments: [Self.now(), inferenceId, label, blob, modelVersion])
            let id = db.lastInsertedRowID
            let count = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM feedback") ?? 0
            return (id, count)
        }
    }

    public func feedbackCount() throws -> Int {
        try pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM feedback") ?? 0 }
    }
}
