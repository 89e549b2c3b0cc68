import CMosquitto
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Where and how to connect. `broker` is `mqtt://host:port` or `mqtts://host:port` (TLS).
public struct MQTTSettings: Sendable {
    public enum ProtocolChoice: String, Sendable {
        /// MQTT 5, falling back to 3.1.1 when the broker refuses 5.
        case auto
        case v5
        case v311
    }

    public var host: String
    public var port: Int
    public var tls: Bool
    public var clientId: String
    public var keepalive = 30
    /// A persistent session: the broker keeps the subscriptions and queues QoS 1 commands while
    /// the agent is away (MQTT 5: for `sessionExpiry` seconds).
    public var cleanSession = false
    public var sessionExpiry: UInt32 = 86_400
    /// MQTT 5: the largest packet the broker may send this client (0: no limit). Larger ones it
    /// drops; under 3.1.1 the client drops them itself, before copying (`maximumPacketSize` too).
    public var maximumPacketSize: UInt32 = 0
    /// Makes the last will's payload anew before each connection (a fresh `msg_id` and `ts`).
    public var willFactory: (@Sendable () -> [UInt8])? = nil
    public var protocolChoice = ProtocolChoice.auto
    public var caFile = ""
    public var certFile = ""
    public var keyFile = ""
    public var username = ""
    public var password = ""
    /// The last will: published by the broker when the connection is lost without a DISCONNECT.
    public var will: (topic: String, payload: [UInt8])? = nil
    /// Reconnect backoff: full jitter over an exponential ceiling, in seconds.
    public var backoffInitial = 0.5
    public var backoffMax = 30.0

    public init(host: String, port: Int, tls: Bool, clientId: String) {
        self.host = host
        self.port = port
        self.tls = tls
        self.clientId = clientId
    }

    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]` (default ports 1883 and 8883).
    public static func parseBroker(_ url: String) throws -> (host: String, port: Int, tls: Bool) {
        let tls: Bool
        let rest: Substring
        if url.hasPrefix("mqtt://") {
            tls = false
            rest = url.dropFirst(7)
        } else if url.hasPrefix("mqtts://") {
            tls = true
            rest = url.dropFirst(8)
        } else {
            throw MQTTError("broker '\(url.prefix(200))' must start with mqtt:// or mqtts://")
        }
        var host = String(rest), port = tls ? 8883 : 1883
        if host.hasSuffix("/") { host.removeLast() }
        if let colon = host.lastIndex(of: ":"), !host.hasSuffix("]") {
            guard let p = Int(host[host.index(after: colon)...]), (1...65535).contains(p) else {
                throw MQTTError("broker '\(url.prefix(200))': the port must be a number from 1 to 65535")
            }
            port = p
            host = String(host[..<colon])
        }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, !host.contains("/"), !host.contains("@"), host.utf8.count <= 253 else {
            throw MQTTError("broker '\(url.prefix(200))' has no host name (expected mqtt://host:port)")
        }
        return (host, port, tls)
    }
}

public struct MQTTError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}

/// A message received, copied out of libmosquitto's buffers inside its callback.
public struct MQTTMessage: Sendable {
    public var topic: String
    public var payload: [UInt8]
    public var retained: Bool
    /// MQTT 5 request/response: where the answer goes, and the bytes it must carry back.
    public var responseTopic: String?
    public var correlationData: [UInt8]?
}

public enum MQTTEvent: Sendable {
    /// CONNACK accepted; the protocol spoken (5 or 4 for 3.1.1).
    case connected(protocolVersion: Int, sessionPresent: Bool)
    /// A connection attempt failed or the broker refused it; the client retries after a jittered wait.
    case connectFailed(String)
    case disconnected(String)
    /// The broker acknowledged the QoS 1 publish with this message id (PUBACK).
    case acknowledged(mid: Int32)
    /// The broker refused the QoS 1 publish (MQTT 5 PUBACK reason ≥ 0x80, e.g. not authorised): it will not be taken later either.
    case rejected(mid: Int32, reason: String)
    /// A message larger than `maximumPacketSize`, dropped without being copied.
    case droppedOversize(topic: String, bytes: Int)
    case message(MQTTMessage)
}

/// libmosquitto behind one owner thread. That thread alone connects, runs `mosquitto_loop`, waits
/// out the reconnect backoff and, on `stop`, says goodbye; libmosquitto's callbacks run on it,
/// copy what they get and hand it to Swift concurrency through `events` (never blocking: the
/// stream buffers). `publish` and `subscribe` may be called from any thread
/// (`mosquitto_threaded_set`); they fail at once while disconnected, so nothing piles up in
/// libmosquitto's own unbounded queue — the caller's outbox keeps it instead.
public final class MQTTClient: @unchecked Sendable {
    public let events: AsyncStream<MQTTEvent>
    private let continuation: AsyncStream<MQTTEvent>.Continuation
    /// Set before `start` to take events on the owner thread instead of through `events` (for
    /// callers that block threads, like a command-line tool; it must not block).
    public var eventHandler: (@Sendable (MQTTEvent) -> Void)?
    public let settings: MQTTSettings
    private let mosq: OpaquePointer
    private let lock = NSLock()
    private var connected = false
    private var stopping = false
    private var goodbye: (topic: String, payload: [UInt8])?
    private var speaking = MQTT_PROTOCOL_V5
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)
    private var attempts = 0
    /// A wake-up for the backoff sleep (stop should not wait out 30 s).
    private let wake = DispatchSemaphore(value: 0)

    private static let libraryInit: Void = { mosquitto_lib_init(); return () }()

    public init(settings: MQTTSettings) throws {
        _ = Self.libraryInit
        self.settings = settings
        (events, continuation) = AsyncStream.makeStream(of: MQTTEvent.self, bufferingPolicy: .unbounded)
        guard let m = mosquitto_new(settings.clientId, settings.cleanSession, nil) else {
            throw MQTTError("libmosquitto could not make a client (\(String(cString: strerror(errno))))")
        }
        mosq = m
        speaking = settings.protocolChoice == .v311 ? MQTT_PROTOCOL_V311 : MQTT_PROTOCOL_V5
        mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, speaking)
        mosquitto_threaded_set(m, true)
        mosquitto_user_data_set(m, Unmanaged.passUnretained(self).toOpaque())
        try configure()
        mosquitto_connect_v5_callback_set(m) { _, obj, rc, flags, _ in
            guard let obj else { return }
            Unmanaged<MQTTClient>.fromOpaque(obj).takeUnretainedValue().onConnect(rc: rc, flags: flags)
        }
        mosquitto_disconnect_v5_callback_set(m) { _, obj, rc, _ in
            guard let obj else { return }
            Unmanaged<MQTTClient>.fromOpaque(obj).takeUnretainedValue().onDisconnect(rc: rc)
        }
        mosquitto_publish_v5_callback_set(m) { _, obj, mid, reason, _ in
            guard let obj else { return }
            let client = Unmanaged<MQTTClient>.fromOpaque(obj).takeUnretainedValue()
            // A QoS 1 PUBACK with a failure reason (MQTT 5) is not an acknowledgement.
            guard reason < 0x80 else {
                client.emit(.rejected(mid: mid, reason: String(cString: mosquitto_reason_string(reason))))
                return
            }
            client.onPublished(mid: mid)
        }
        mosquitto_message_v5_callback_set(m) { _, obj, message, props in
            guard let obj, let message else { return }
            Unmanaged<MQTTClient>.fromOpaque(obj).takeUnretainedValue().onMessage(message.pointee, props: props)
        }
    }

    // The owner thread holds the client while it runs: deinit comes only after it ended.
    deinit { mosquitto_destroy(mosq) }

    private func configure() throws {
        let s = settings
        if !s.username.isEmpty {
            let rc = mosquitto_username_pw_set(mosq, s.username, s.password.isEmpty ? nil : s.password)
            guard rc == MOSQ_ERR_SUCCESS.rawValue else { throw MQTTError("mqtt username: \(Self.describe(rc))") }
        }
        if s.tls {
            for (name, path) in [("mqtt.ca_file", s.caFile), ("mqtt.cert_file", s.certFile), ("mqtt.key_file", s.keyFile)]
            where !path.isEmpty && access(path, R_OK) != 0 {
                throw MQTTError("\(name): \(path): \(String(cString: strerror(errno)))")
            }
            let rc = mosquitto_tls_set(mosq, s.caFile.isEmpty ? nil : s.caFile, s.caFile.isEmpty ? "/etc/ssl/certs" : nil,
                                       s.certFile.isEmpty ? nil : s.certFile, s.keyFile.isEmpty ? nil : s.keyFile, nil)
            guard rc == MOSQ_ERR_SUCCESS.rawValue else { throw MQTTError("mqtt TLS settings: \(Self.describe(rc))") }
        }
        if let will = s.will {
            let rc = will.payload.withUnsafeBytes {
                mosquitto_will_set_v5(mosq, will.topic, Int32($0.count), $0.baseAddress, 1, true, nil)
            }
            guard rc == MOSQ_ERR_SUCCESS.rawValue else { throw MQTTError("mqtt last will: \(Self.describe(rc))") }
        }
    }

    fileprivate func emit(_ e: MQTTEvent) {
        if let eventHandler { eventHandler(e) } else { continuation.yield(e) }
    }

    static func describe(_ rc: Int32) -> String { String(cString: mosquitto_strerror(rc)) }

    public var isConnected: Bool {
        lock.lock()
        defer { lock.unlock() }
        return connected
    }

    /// 5 for MQTT 5, 4 for 3.1.1: what the next (or current) connection speaks.
    public var protocolVersion: Int {
        lock.lock()
        defer { lock.unlock() }
        return speaking == MQTT_PROTOCOL_V5 ? 5 : 4
    }

    // MARK: callbacks (owner thread)

    private func onConnect(rc: Int32, flags: Int32) {
        if rc == 0 {
            lock.lock()
            connected = true
            attempts = 0
            let version = speaking == MQTT_PROTOCOL_V5 ? 5 : 4
            lock.unlock()
            emit(.connected(protocolVersion: version, sessionPresent: flags & 1 == 1))
            return
        }
        // 0x84 (MQTT 5 "unsupported protocol version") or 1 (3.1.1 "unacceptable protocol version").
        lock.lock()
        let fallBack = settings.protocolChoice == .auto && speaking == MQTT_PROTOCOL_V5 && (rc == 0x84 || rc == 1)
        if fallBack { speaking = MQTT_PROTOCOL_V311 }
        lock.unlock()
        if fallBack { mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311) }
        let why = rc < 6 ? String(cString: mosquitto_connack_string(rc)) : String(cString: mosquitto_reason_string(rc))
        emit(.connectFailed("the broker refused the connection: \(why)" + (fallBack ? "; retrying with MQTT 3.1.1" : "")))
    }

    private var goodbyeMid: Int32 = -1
    private var goodbyeAcked = false

    private func onPublished(mid: Int32) {
        lock.lock()
        if mid == goodbyeMid { goodbyeAcked = true }
        lock.unlock()
        emit(.acknowledged(mid: mid))
    }

    private func onDisconnect(rc: Int32) {
        lock.lock()
        let was = connected
        connected = false
        lock.unlock()
        if was { emit(.disconnected(rc == 0 ? "disconnected" : "connection lost (\(Self.describe(rc)))")) }
    }

    private func onMessage(_ m: mosquitto_message, props: OpaquePointer?) {
        let topic = m.topic.map { String(cString: $0) } ?? ""
        if settings.maximumPacketSize > 0 && Int(m.payloadlen) > Int(settings.maximumPacketSize) {
            emit(.droppedOversize(topic: String(topic.prefix(256)), bytes: Int(m.payloadlen)))
            return
        }
        var payload: [UInt8] = []
        if let p = m.payload, m.payloadlen > 0 {
            payload = Array(UnsafeRawBufferPointer(start: p, count: Int(m.payloadlen)))
        }
        var response: String?
        var correlation: [UInt8]?
        if let props {
            var value: UnsafeMutablePointer<CChar>?
            if mosquitto_property_read_string(props, Int32(MQTT_PROP_RESPONSE_TOPIC.rawValue), &value, false) != nil, let value {
                response = String(cString: value)
                free(value)
            }
            var bytes: UnsafeMutableRawPointer?
            var length: UInt16 = 0
            if mosquitto_property_read_binary(props, Int32(MQTT_PROP_CORRELATION_DATA.rawValue), &bytes, &length, false) != nil, let bytes {
                correlation = Array(UnsafeRawBufferPointer(start: bytes, count: Int(length)))
                free(bytes)
            }
        }
        emit(.message(MQTTMessage(topic: topic, payload: payload, retained: m.retain, responseTopic: response,
                                                correlationData: correlation)))
    }

    // MARK: the owner thread

    public func start() {
        let t = Thread { [self] in self.ownerLoop() }
        t.name = "mqtt"
        lock.lock()
        thread = t
        lock.unlock()
        t.start()
    }

    private var isStopping: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stopping
    }

    private func ownerLoop() {
        while !isStopping {
            if !isConnectedOrConnecting {
                connectOnce()
                continue
            }
            let rc = mosquitto_loop(mosq, 100, 1)
            if rc != MOSQ_ERR_SUCCESS.rawValue {
                onDisconnect(rc: rc)
                socketOpen = false
                backoff()
            } else if !isConnected, connectStarted.map({ Date().timeIntervalSince($0) > Double(settings.keepalive) }) == true {
                // No CONNACK within a keepalive: give up on this attempt.
                mosquitto_disconnect(mosq)
                socketOpen = false
                emit(.connectFailed("no answer from the broker within \(settings.keepalive) s"))
                backoff()
            }
        }
        sayGoodbye()
        continuation.finish()
        finished.signal()
    }

    /// The socket is open (CONNECT sent, CONNACK maybe not yet received).
    private var socketOpen = false
    private var connectStarted: Date?
    private var isConnectedOrConnecting: Bool { socketOpen }

    private func connectOnce() {
        if let make = settings.willFactory, let will = settings.will {
            let payload = make()
            _ = payload.withUnsafeBytes { mosquitto_will_set_v5(mosq, will.topic, Int32($0.count), $0.baseAddress, 1, true, nil) }
        }
        var props: OpaquePointer?
        if protocolVersion == 5 && !settings.cleanSession {
            mosquitto_property_add_int32(&props, Int32(MQTT_PROP_SESSION_EXPIRY_INTERVAL.rawValue), settings.sessionExpiry)
        }
        if protocolVersion == 5 && settings.maximumPacketSize > 0 {
            mosquitto_property_add_int32(&props, Int32(MQTT_PROP_MAXIMUM_PACKET_SIZE.rawValue), settings.maximumPacketSize)
        }
        let rc = mosquitto_connect_bind_v5(mosq, settings.host, Int32(settings.port), Int32(settings.keepalive), nil, props)
        mosquitto_property_free_all(&props)
        if rc == MOSQ_ERR_SUCCESS.rawValue {
            socketOpen = true
            connectStarted = Date()
        } else {
            let why = rc == MOSQ_ERR_ERRNO.rawValue ? String(cString: strerror(errno)) : Self.describe(rc)
            emit(.connectFailed("\(settings.host):\(settings.port): \(why)"))
            backoff()
        }
    }

    /// Full jitter: a uniform wait between 0 and min(max, initial·2^attempt), so a fleet that lost
    /// its broker does not come back in lockstep.
    public static func backoffDelay(attempt: Int, initial: Double, max ceiling: Double) -> Double {
        let exp = initial * pow(2, Double(min(attempt, 30)))
        return Double.random(in: 0...min(ceiling, exp))
    }

    private func backoff() {
        lock.lock()
        let attempt = attempts
        attempts += 1
        lock.unlock()
        let delay = max(0.05, Self.backoffDelay(attempt: attempt, initial: settings.backoffInitial, max: settings.backoffMax))
        _ = wake.wait(timeout: .now() + delay)
    }

    /// A clean stop: the goodbye message (retained `offline`) published and acknowledged (up to
    /// two seconds), then DISCONNECT — so the broker does not send the last will.
    private func sayGoodbye() {
        guard socketOpen else { return }
        lock.lock()
        let message = goodbye
        lock.unlock()
        if let message, isConnected {
            var mid: Int32 = 0
            lock.lock()
            let rc = message.payload.withUnsafeBytes {
                mosquitto_publish_v5(mosq, &mid, message.topic, Int32($0.count), $0.baseAddress, 1, true, nil)
            }
            goodbyeMid = mid
            lock.unlock()
            if rc == MOSQ_ERR_SUCCESS.rawValue {
                let until = Date().addingTimeInterval(2)
                while Date() < until, mosquitto_loop(mosq, 50, 1) == MOSQ_ERR_SUCCESS.rawValue {
                    lock.lock()
                    let acked = goodbyeAcked
                    lock.unlock()
                    if acked { break }
                }
            }
        }
        mosquitto_disconnect(mosq)
        _ = mosquitto_loop(mosq, 50, 1)
        socketOpen = false
    }

    /// Stops the owner thread (publishing `goodbye` first when connected) and waits for it at most
    /// `timeout` seconds: a stuck thread is left behind rather than hanging the caller
    /// (libmosquitto's `loop_stop` trap).
    public func stop(goodbye: (topic: String, payload: [UInt8])? = nil, timeout: Double = 5) {
        lock.lock()
        let started = thread != nil
        stopping = true
        self.goodbye = goodbye
        lock.unlock()
        wake.signal()
        guard started else {
            continuation.finish()
            return
        }
        _ = finished.wait(timeout: .now() + timeout)
    }

    // MARK: any thread

    /// Publishes; returns the message id (QoS 1: `acknowledged(mid)` follows), or throws at once when
    /// not connected or libmosquitto refuses.
    @discardableResult
    public func publish(topic: String, payload: [UInt8], qos: Int32 = 1, retain: Bool = false,
                        responseTopic: String? = nil, correlationData: [UInt8]? = nil) throws -> Int32 {
        guard isConnected else { throw MQTTError("not connected") }
        var props: OpaquePointer?
        defer { mosquitto_property_free_all(&props) }
        if protocolVersion == 5 {
            if let responseTopic { mosquitto_property_add_string(&props, Int32(MQTT_PROP_RESPONSE_TOPIC.rawValue), responseTopic) }
            if let correlationData, correlationData.count <= 65535 {
                correlationData.withUnsafeBytes {
                    _ = mosquitto_property_add_binary(&props, Int32(MQTT_PROP_CORRELATION_DATA.rawValue), $0.baseAddress, UInt16($0.count))
                }
            }
        }
        var mid: Int32 = 0
        let rc = payload.withUnsafeBytes {
            mosquitto_publish_v5(mosq, &mid, topic, Int32($0.count), $0.baseAddress, qos, retain, props)
        }
        guard rc == MOSQ_ERR_SUCCESS.rawValue else { throw MQTTError("publish to \(topic): \(Self.describe(rc))") }
        return mid
    }

    public func subscribe(_ topics: [String], qos: Int32 = 1) throws {
        for topic in topics {
            let rc = mosquitto_subscribe_v5(mosq, nil, topic, qos, 0, nil)
            guard rc == MOSQ_ERR_SUCCESS.rawValue else { throw MQTTError("subscribe to \(topic): \(Self.describe(rc))") }
        }
    }
}
