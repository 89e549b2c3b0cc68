import Foundation

/// The fleet's topic tree (README, "Fleet over MQTT"): a device's root is `{prefix}/{fleet}/{device}`;
/// commands and deployments may also arrive on `{prefix}/{fleet}/all/...` and
/// `{prefix}/{fleet}/group/{name}/...`.
public struct FleetTopics: Sendable, Equatable {
    public let prefix: String
    public let fleet: String
    public let device: String
    public let groups: [String]

    public init(prefix: String, fleet: String, device: String, groups: [String]) {
        self.prefix = prefix
        self.fleet = fleet
        self.device = device
        self.groups = groups
    }

    public var fleetRoot: String { "\(prefix)/\(fleet)" }
    public var root: String { "\(fleetRoot)/\(device)" }
    public var status: String { "\(root)/status" }
    public var telemetry: String { "\(root)/telemetry" }
    public var events: String { "\(root)/events" }
    public var deployResult: String { "\(root)/model/deploy/result" }
    public func reply(verb: String) -> String { "\(root)/cmd/\(verb)/reply" }

    /// Every address this device answers to: its own root, `all`, and each of its groups.
    public var addresses: [String] { [root, "\(fleetRoot)/all"] + groups.map { "\(fleetRoot)/group/\($0)" } }

    public var subscriptions: [String] { addresses.flatMap { ["\($0)/cmd/+", "\($0)/model/deploy"] } }

    /// What an incoming topic asks for: a command verb or a deployment; nil for anything else
    /// (a reply, another device's topic).
    public enum Incoming: Equatable, Sendable {
        case command(verb: String)
        case deploy
    }

    public func classify(_ topic: String) -> Incoming? {
        for address in addresses where topic.hasPrefix(address + "/") {
            let rest = topic.dropFirst(address.count + 1)
            if rest == "model/deploy" { return .deploy }
            let parts = rest.split(separator: "/", omittingEmptySubsequences: false)
            if parts.count == 2 && parts[0] == "cmd" && !parts[1].isEmpty { return .command(verb: String(parts[1])) }
        }
        return nil
    }
}

/// A fixed-format timestamp (ISO 8601, milliseconds, UTC) and its parse.
public enum FleetTime {
    public static func string(_ date: Date = Date()) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: date)
    }

    public static func parse(_ text: String) -> Date? {
        guard text.utf8.count <= 64 else { return nil }
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let d = f.date(from: text) { return d }
        f.formatOptions = [.withInternetDateTime]
        return f.date(from: text)
    }

    /// A random message id: 16 bytes, hex.
    public static func messageId() -> String {
        var g = SystemRandomNumberGenerator()
        return (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &g)) }.joined()
    }
}
