import Foundation

/// A blocking view of the MQTT client for command-line tools and tests: wait for the connection, publish
/// and wait for the acknowledgement, take received messages one by one.
public final class MQTTSession: @unchecked Sendable {
    public let client: MQTTClient
    private let condition = NSCondition()
    private var connected = false
    private var lastError = ""
    private var acked = Set<Int32>()
    private var refused: [Int32: String] = [:]
    /// Where `subscribe` publishes its round-trip marker (an operator account may write it; the
    /// default suits an open broker).
    public var syncTopic: String
    private var messages: [MQTTMessage] = []

    public init(settings: MQTTSettings, broker: String, timeout: Double = 10) throws {
        client = try MQTTClient(settings: settings)
        syncTopic = "agentctl/sync/\(settings.clientId)"
        client.eventHandler = { [weak self] e in self?.take(e) }
        client.start()
        condition.lock()
        let until = Date().addingTimeInterval(timeout)
        while !connected && condition.wait(until: until) {}
        let ok = connected, why = lastError
        condition.unlock()
        guard ok else {
            client.stop(timeout: 1)
            throw MQTTError("\(broker): no connection within \(Int(timeout)) s\(why.isEmpty ? "" : " (\(why))")")
        }
    }

    /// Messages received and not yet taken, without waiting.
    public func drain() -> [MQTTMessage] {
        condition.lock()
        defer { condition.unlock() }
        let all = messages
        messages.removeAll()
        return all
    }

    private func take(_ e: MQTTEvent) {
        condition.lock()
        switch e {
        case .connected: connected = true
        case .connectFailed(let why), .disconnected(let why): lastError = why
        case .acknowledged(let mid): acked.insert(mid)
        case .rejected(let mid, let reason): refused[mid] = reason
        case .droppedOversize: break
        case .message(let m): messages.append(m)
        }
        condition.broadcast()
        condition.unlock()
    }

    public func subscribe(_ topics: [String]) throws {
        try client.subscribe(topics)
        // SUBACK is not surfaced; one round trip through a QoS 1 publish to nowhere stands in for it.
        try publish(topic: syncTopic, payload: [], retain: false)
    }

    public func publish(topic: String, payload: [UInt8], retain: Bool = false, responseTopic: String? = nil, correlation: [UInt8]? = nil,
                 timeout: Double = 10) throws {
        let mid = try client.publish(topic: topic, payload: payload, qos: 1, retain: retain, responseTopic: responseTopic, correlationData: correlation)
        condition.lock()
        defer { condition.unlock() }
        let until = Date().addingTimeInterval(timeout)
        while !acked.contains(mid) {
            if let why = refused.removeValue(forKey: mid) { throw MQTTError("\(topic): the broker refused the message: \(why)") }
            guard condition.wait(until: until) else { throw MQTTError("\(topic): the broker did not acknowledge within \(Int(timeout)) s") }
        }
        acked.remove(mid)
    }

    /// The next message, waiting until `deadline`; nil when none came.
    public func next(until deadline: Date) -> MQTTMessage? {
        condition.lock()
        defer { condition.unlock() }
        while messages.isEmpty {
            guard condition.wait(until: deadline) else { return nil }
        }
        return messages.removeFirst()
    }

    public func close() { client.stop(timeout: 3) }
}

