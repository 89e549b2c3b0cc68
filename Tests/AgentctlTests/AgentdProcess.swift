import AgentAPI
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A real agentd process with a temporary state directory, socket and config, and a datagram
/// socket bound as its NOTIFY_SOCKET to read the sd_notify messages it sends.
final class AgentdProcess: @unchecked Sendable {
    let dir: String
    let socket: String
    let configPath: String
    let process = Process()
    let notifyPath: String
    private let notifyFD: Int32
    private var received: [String] = []
    let logPath: String

    static let binary: String = {
        if let explicit = ProcessInfo.processInfo.environment["AGENTD"] { return explicit }
        return URL(fileURLWithPath: Agentctl.path).deletingLastPathComponent().appendingPathComponent("agentd").path
    }()

    /// A quickly trained digits MLP shared by the daemon tests.
    static let model = Agentctl.trainedModel(name: "digits-mlp", arch: "mlp:64-64-10", epochs: 8)

    /// `launcher` runs before agentd and exec's it (e.g. to set process restrictions).
    init(config extra: String = "", model: String = AgentdProcess.model, dir: String? = nil, environment: [String: String] = [:],
         launcher: [String] = [], socketGroup: String = "") throws {
        self.dir = dir ?? temporaryDirectory("agentd")
        socket = self.dir + "/agentd.sock"
        configPath = self.dir + "/agentd.toml"
        logPath = self.dir + "/agentd.log"
        notifyPath = self.dir + "/notify-\(UInt32.random(in: 0...UInt32.max)).sock"
        let config = """
            [agent]
            state_dir = "\(self.dir)/state"
            socket = "\(socket)"
            socket_group = "\(socketGroup)"
            [model]
            initial = "\(model)"
            calibration = "\(Agentctl.digits)"
            \(extra)
            """
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        notifyFD = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(notifyPath.utf8) + [0]) }
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(notifyFD, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        // An agentd launched as another user (AccessTests) may send to it too.
        chmod(notifyPath, 0o777)
        var tv = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(notifyFD, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        if let first = launcher.first {
            process.executableURL = URL(fileURLWithPath: first)
            process.arguments = Array(launcher.dropFirst()) + [Self.binary, "--config", configPath]
        } else {
            process.executableURL = URL(fileURLWithPath: Self.binary)
            process.arguments = ["--config", configPath]
        }
        var env = ProcessInfo.processInfo.environment
        env["NOTIFY_SOCKET"] = notifyPath
        for (k, v) in environment { env[k] = v }
        process.environment = env
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardOutput = log
        process.standardError = log
        try process.run()
        Self.track(process.processIdentifier)
    }

    /// Daemons still running when the test process exits (a shared `static let` agent is never
    /// deinitialised) are killed then, so no test run leaves an agentd behind.
    static let running = RunningChildren()
    private static func track(_ pid: Int32) { running.add(pid) }

    deinit {
        process.terminateBounded()
        Self.running.remove(process.processIdentifier)
        close(notifyFD)
    }

    var client: AgentClient { AgentClient(socketPath: socket, timeoutSeconds: 30) }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Reads notify datagrams until one contains `fragment` or `timeout` passes.
    /// Only messages after the first `after` received count (`mark()` taken before a signal
    /// waits for that signal's answer, not an earlier one).
    @discardableResult
    func waitForNotification(_ fragment: String, after: Int = 0, timeout: Double = 60) -> String? {
        if let hit = received.dropFirst(after).first(where: { $0.contains(fragment) }) { return hit }
        let end = Date(timeIntervalSinceNow: timeout)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while Date() < end {
            let n = recv(notifyFD, &buffer, buffer.count, 0)
            if n > 0 {
                let message = String(decoding: buffer[0..<n], as: UTF8.self)
                received.append(message)
                if message.contains(fragment) { return message }
            } else if !process.isRunning {
                return nil
            }
        }
        return nil
    }

    var notifications: [String] { received }

    /// Reads the datagrams already sent and returns how many there are: pass it as `after` to
    /// wait for what a signal sent next.
    func mark() -> Int {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(notifyFD, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            guard n > 0 else { break }
            received.append(String(decoding: buffer[0..<n], as: UTF8.self))
        }
        return received.count
    }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    func waitForExit(timeout: Double = 30) -> Int32? {
        let end = Date(timeIntervalSinceNow: timeout)
        while process.isRunning && Date() < end { usleep(20_000) }
        return process.isRunning ? nil : process.terminationStatus
    }

    func agentctl(_ args: [String]) throws -> Agentctl.Result {
        try Agentctl.run(args + ["--socket", socket])
    }
}

/// Children that a shared `static let` (an agentd, a broker) keeps alive until the test process
/// exits: killed then, so no test run leaves one behind.
final class RunningChildren: @unchecked Sendable {
    private let lock = NSLock()
    private var pids: Set<Int32> = []
    private var registered = false
    func add(_ pid: Int32) {
        lock.lock()
        pids.insert(pid)
        if !registered {
            registered = true
            atexit { AgentdProcess.running.killAll() }
        }
        lock.unlock()
    }
    func remove(_ pid: Int32) {
        lock.lock()
        pids.remove(pid)
        lock.unlock()
    }
    func killAll() {
        lock.lock()
        for pid in pids { kill(pid, SIGKILL) }
        lock.unlock()
    }
}
