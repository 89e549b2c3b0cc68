import AgentCore
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// WATCHDOG_USEC comes from outside (systemd, or whoever starts agentd): a hostile value must
/// neither trap the supervisor's sleep arithmetic nor make it spin.
@Suite struct SystemdNotifierTests {
    @Test(arguments: ["inf", "-inf", "nan", "1e300", "-5", "0", "abc", "", "18446744073709551616"])
    func hostileWatchdogIntervalsAreRefusedOrBounded(_ value: String) {
        let interval = SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": value])
        if let interval {
            #expect(interval.isFinite && interval >= 0.05 && interval <= 86_400, "\(value) gave \(interval)")
        }
        if ["inf", "-inf", "nan", "-5", "0", "abc", ""].contains(value) { #expect(interval == nil, "\(value)") }
    }

    @Test func aSaneIntervalIsHalfTheWatchdog() {
        #expect(SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": "30000000"]) == 15)
        #expect(SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": "1"]) == 0.05)
    }

    /// A receiver that never reads: its queue fills after a few datagrams, and every further
    /// notify must return at once (dropped), never block agentd.
    @Test(.timeLimit(.minutes(1))) func aReceiverThatDoesNotReadNeverBlocksTheSender() throws {
        let path = NSTemporaryDirectory() + "notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        defer { unlink(path) }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        try #require(fd >= 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        try #require(bound == 0)
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": path])
        let started = Date()
        var sent = 0
        for _ in 0..<500 where notifier.notify("WATCHDOG=1") { sent += 1 }
        #expect(sent > 0 && sent < 500, "\(sent) of 500 sent to a receiver that never reads")
        #expect(Date().timeIntervalSince(started) < 5)
    }
}
