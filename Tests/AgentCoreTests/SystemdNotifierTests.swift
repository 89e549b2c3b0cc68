import AgentCore
import Testing

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
}
