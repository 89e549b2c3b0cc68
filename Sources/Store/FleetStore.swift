import Foundation
import GRDB

/// The fleet side of the database (migration v3): the outbox of messages waiting for the broker's
/// acknowledgement, small fleet state (counters, the deployment counter, the trusted key set), and
/// the commands already run (by `msg_id`). Every event row enters the outbox in the transaction
/// that writes it (a trigger), so no event is ever written without also being queued to send.
extension AgentDatabase {
    static func registerFleetMigration(_ m: inout DatabaseMigrator) {
        m.registerMigration("v3: fleet outbox, fleet state, commands") { db in
            try db.create(table: "outbox") { t in
                t.autoIncrementedPrimaryKey("id")
                // Below the device's root: "telemetry", "events", "model/deploy/result".
                t.column("kind", .text).notNull()
                t.column("payload", .blob).notNull()
                t.column("bytes", .integer).notNull()
                t.column("created", .text).notNull()
            }
            try db.create(table: "fleet_state") { t in
                t.primaryKey("key", .text)
                t.column("value", .text).notNull()
            }
            try db.create(table: "fleet_commands") { t in
                t.primaryKey("msg_id", .text)
                t.column("verb", .text).notNull()
                t.column("received", .text).notNull()
                t.column("reply", .blob)
            }
            try db.execute(sql: """
                CREATE TRIGGER events_to_outbox AFTER INSERT ON events BEGIN
                  INSERT INTO outbox (kind, payload, bytes, created)
                  SELECT 'events', p, length(p) + \(outboxRowOverhead), NEW.ts FROM (SELECT CAST(json_object(
                    'msg_id', lower(hex(randomblob(16))), 'ts', NEW.ts, 'id', NEW.id, 'kind', NEW.kind, 'message', NEW.message) AS BLOB) AS p);
                END
                """)
        }
    }

    static let outboxRowOverhead = 32

    public struct OutboxRow: Sendable, Equatable {
        public var id: Int64
        public var kind: String
        public var payload: [UInt8]
    }

    public struct OutboxSize: Sendable, Equatable {
        public var rows: Int
        public var bytes: Int
        public init(rows: Int, bytes: Int) {
            self.rows = rows
            self.bytes = bytes
        }
    }

    @discardableResult
    public func outboxAppend(kind: String, payload: [UInt8]) throws -> Int64 {
        try pool.write { db in try Self.outboxInsert(db, kind: kind, payload: payload) }
    }

    static func outboxInsert(_ db: Database, kind: String, payload: [UInt8]) throws -> Int64 {
        try db.execute(sql: "INSERT INTO outbox (kind, payload, bytes, created) VALUES (?, ?, ?, ?)",
                       arguments: [kind, Data(payload), payload.count + Self.outboxRowOverhead, Self.now()])
        return db.lastInsertedRowID
    }

    /// The oldest rows after `id`, in order.
    public func outboxPending(after id: Int64, limit: Int) throws -> [OutboxRow] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT id, kind, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?", arguments: [id, limit]).map {
                OutboxRow(id: $0["id"], kind: $0["kind"], payload: [UInt8]($0["payload"] as Data))
            }
        }
    }

    public func outboxDelete(ids: [Int64]) throws {
        guard !ids.isEmpty else { return }
        try pool.write { db in
            for id in ids { try db.execute(sql: "DELETE FROM outbox WHERE id = ?", arguments: [id]) }
        }
    }

    public func outboxSize() throws -> OutboxSize {
        try pool.read { db in
            let row = try Row.fetchOne(db, sql: "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM outbox")!
            return OutboxSize(rows: row[0], bytes: row[1])
        }
    }

    public static let outboxDroppedKey = "outbox_dropped"

    /// Trims the outbox to `maxBytes`: telemetry oldest first, then (only if telemetry alone
    /// cannot make room) everything else oldest first. The drop counter moves in the same
    /// transaction. Returns how many rows went.
    @discardableResult
    public func outboxTrim(maxBytes: Int) throws -> Int {
        try pool.write { db in
            var bytes = try Int.fetchOne(db, sql: "SELECT COALESCE(SUM(bytes), 0) FROM outbox") ?? 0
            guard bytes > maxBytes else { return 0 }
            var doomed: [Int64] = []
            for sql in ["SELECT id, bytes FROM outbox WHERE kind = 'telemetry' ORDER BY id",
                        "SELECT id, bytes FROM outbox WHERE kind <> 'telemetry' ORDER BY id"] where bytes > maxBytes {
                let cursor = try Row.fetchCursor(db, sql: sql)
                while bytes > maxBytes, let row = try cursor.next() {
                    doomed.append(row[0])
                    bytes -= row[1] as Int
                }
            }
            for id in doomed { try db.execute(sql: "DELETE FROM outbox WHERE id = ?", arguments: [id]) }
            let dropped = Int64(try String.fetchOne(db, sql: "SELECT value FROM fleet_state WHERE key = ?", arguments: [Self.outboxDroppedKey]) ?? "0") ?? 0
            try Self.setFleetValue(db, Self.outboxDroppedKey, String(dropped + Int64(doomed.count)))
            return doomed.count
        }
    }

    /// One more message dropped (the broker refused it).
    public func countOutboxDrop() throws {
        try pool.write { db in
            let dropped = Int64(try String.fetchOne(db, sql: "SELECT value FROM fleet_state WHERE key = ?", arguments: [Self.outboxDroppedKey]) ?? "0") ?? 0
            try Self.setFleetValue(db, Self.outboxDroppedKey, String(dropped + 1))
        }
    }

    // MARK: fleet state

    public func fleetValue(_ key: String) throws -> String? {
        try pool.read { db in try String.fetchOne(db, sql: "SELECT value FROM fleet_state WHERE key = ?", arguments: [key]) }
    }

    static func setFleetValue(_ db: Database, _ key: String, _ value: String) throws {
        try db.execute(sql: "INSERT INTO fleet_state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       arguments: [key, value])
    }

    public func setFleetValue(_ key: String, _ value: String) throws {
        try pool.write { db in try Self.setFleetValue(db, key, value) }
    }

    /// The deployment between its counter move and its outcome (JSON), cleared with the result.
    public static let deployPendingKey = "deploy_pending"

    /// A deployment's outcome in one transaction: the result queued for the broker, the status
    /// line kept, the pending record cleared. A crash leaves either all of it or none.
    /// `pending`: the record this deployment wrote (cleared only if it is still that one; a
    /// refusal of another message while a deployment runs leaves that deployment's record alone).
    public func finishDeployment(result: [UInt8], line: String, lineKey: String, pending: String?) throws {
        try pool.write { db in
            _ = try Self.outboxInsert(db, kind: "model/deploy/result", payload: result)
            try Self.setFleetValue(db, lineKey, line)
            if let pending {
                try db.execute(sql: "DELETE FROM fleet_state WHERE key = ? AND value = ?", arguments: [Self.deployPendingKey, pending])
            }
        }
    }

    public static let deployVersionKey = "deploy_version"

    /// Moves the anti-rollback counter to `version` if that is above it; false (and no change)
    /// otherwise — the check and the move are one transaction.
    public func advanceDeployVersion(to version: Int, extra: [String: String] = [:]) throws -> Bool {
        try pool.write { db in
            let current = Int(try String.fetchOne(db, sql: "SELECT value FROM fleet_state WHERE key = ?", arguments: [Self.deployVersionKey]) ?? "0") ?? 0
            guard version > current else { return false }
            try Self.setFleetValue(db, Self.deployVersionKey, String(version))
            for (k, v) in extra { try Self.setFleetValue(db, k, v) }
            return true
        }
    }

    // MARK: commands

    public enum CommandClaim: Equatable, Sendable {
        /// Never seen: run it, then `recordReply`.
        case new
        /// Run before; this was its answer.
        case answered([UInt8])
        /// Claimed before but no answer was recorded (agentd stopped in between): not run again.
        case interrupted
    }

    /// Claims a command by its `msg_id` before it runs, so a redelivery never runs it twice.
    /// Keeps the newest `keep` commands.
    public func claimCommand(msgId: String, verb: String, keep: Int = 10_000) throws -> CommandClaim {
        try pool.write { db in
            if let row = try Row.fetchOne(db, sql: "SELECT reply FROM fleet_commands WHERE msg_id = ?", arguments: [msgId]) {
                guard let reply = row["reply"] as Data? else { return .interrupted }
                return .answered([UInt8](reply))
            }
            try db.execute(sql: "INSERT INTO fleet_commands (msg_id, verb, received) VALUES (?, ?, ?)", arguments: [msgId, verb, Self.now()])
            try db.execute(sql: "DELETE FROM fleet_commands WHERE rowid <= (SELECT MAX(rowid) FROM fleet_commands) - ?", arguments: [keep])
            return .new
        }
    }

    public func recordReply(msgId: String, reply: [UInt8]) throws {
        try pool.write { db in
            try db.execute(sql: "UPDATE fleet_commands SET reply = ? WHERE msg_id = ?", arguments: [Data(reply), msgId])
        }
    }
}
