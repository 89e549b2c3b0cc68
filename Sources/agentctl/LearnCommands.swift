import AgentAPI
import ArgumentParser
import Foundation

struct LearnCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "learn",
        abstract: "Start an on-device update now (or show the last one), optionally waiting for its decision.",
        discussion: """
            The update trains the serving model's FP32 master on the labelled feedback that came
            since the last accepted update (POST /v1/feedback, 'agentctl feedback') together with
            the replay memory: cross-entropy on new and replayed labels, distillation to the
            logits stored with replayed rows, and EWC to the anchor in the model file. The
            quality gate then decides: accepted (a new version serves: re-quantized like the old
            one, drift reference reset), rejected (the numbers say why) or not_needed (the model
            already does as well on the new labels). 'agentctl models' shows a local update's
            lineage; 'agentctl rollback' undoes it like any version.

            A control operation: the caller must be root, agentd's user or in api.admin_group.
            While a job runs another is refused (409); with --wait this command waits for the
            running job and prints its outcome instead.

            Exit status: 0 when the job finished (whatever its decision), 1 when it failed, was
            cancelled or interrupted, 3 when agentd cannot be reached.

            Examples:
              agentctl learn --wait
              agentctl learn --wait --json | jq .decision
              agentctl learn --dry-run --wait      # the decision and numbers, nothing registered
              agentctl learn --last                # the running or last job
            """)
    @OptionGroup var socket: SocketOption
    @Flag(help: "Wait for the decision (progress on stderr).") var wait = false
    @Flag(help: "Run the whole job but register nothing.") var dryRun = false
    @Flag(help: "Show the running or last job; start nothing.") var last = false
    @Flag(help: "Print as JSON (with --wait: one object with the decision and the numbers).") var json = false
    @Option(help: "Give up waiting after this many seconds (the job goes on).") var timeout: Double = 3600

    func validate() throws {
        guard timeout.isFinite, timeout > 0, timeout <= 1e7 else { throw ValidationError("--timeout must be a number of seconds above 0") }
        if last && (wait || dryRun) { throw ValidationError("--last shows a job; it starts none (drop --wait and --dry-run)") }
    }

    struct Outcome: Codable {
        var job: String
        var state: String
        var decision: String?
        var version: Int?
        var before: LearnAccuracy?
        var after: LearnAccuracy?
        var steps: Int?
        var seconds: Double?
        var lambda: Double?
        var alpha: Double?
        var reason: String?

        enum CodingKeys: String, CodingKey { case job, state, decision, version, before, after, steps, seconds, lambda, alpha, reason }

        /// Every key present, null when it does not apply (a script reads `.version` either way).
        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(job, forKey: .job)
            try c.encode(state, forKey: .state)
            try c.encode(decision, forKey: .decision)
            try c.encode(version, forKey: .version)
            try c.encode(before, forKey: .before)
            try c.encode(after, forKey: .after)
            try c.encode(steps, forKey: .steps)
            try c.encode(seconds, forKey: .seconds)
            try c.encode(lambda, forKey: .lambda)
            try c.encode(alpha, forKey: .alpha)
            try c.encode(reason, forKey: .reason)
        }
    }

    func run() throws {
        try talkingToDaemon {
            let client = socket.client
            if last {
                guard let job = try client.learnJob() else {
                    if json { printJSON(LearnNone()) } else { print("no update job has run") }
                    return
                }
                if json { printJSON(job) } else { Self.describe(job) }
                return
            }
            var id: String
            do {
                id = try client.learn(dryRun: dryRun).job
                if !wait {
                    if json { printJSON(LearnStarted(job: id)) } else { print("update job \(id) started; 'agentctl learn --last' shows it, --wait waits for it") }
                    return
                }
            } catch AgentClientError.http(status: 409, _, let message) where wait {
                // Wait for the job that is running. One that has already ended is not this
                // request's (an agentd before 538d764 could answer busy a moment after showing its
                // job ended): the busy answer stands rather than that job's outcome as this one's.
                guard let running = try client.learnJob(), running.state == "running" else { throw ValidationError(message) }
                id = running.job
                if !json { printError("an update is already running (job \(id)); waiting for it") }
            }
            let deadline = Date().addingTimeInterval(timeout)
            var shown = ""
            let terminal = isatty(2) == 1
            while true {
                guard let job = try client.learnJob(), job.job == id else {
                    throw ValidationError("job \(id) is no longer agentd's current job (agentd restarted?); 'agentctl learn --last' shows what it knows")
                }
                if job.state != "running" {
                    if json {
                        printJSON(Outcome(job: job.job, state: job.state, decision: job.decision, version: job.version, before: job.before,
                                          after: job.after, steps: job.steps, seconds: job.seconds, lambda: job.lambda, alpha: job.alpha,
                                          reason: job.reason))
                    } else {
                        if !shown.isEmpty && terminal { printError("") }
                        Self.describe(job)
                    }
                    if job.state != "finished" { throw ExitCode(1) }
                    return
                }
                if !json {
                    let line = "\(job.phase ?? "running")\(job.step.map { " step \($0)" } ?? "")"
                    // A terminal gets one line rewritten; a pipe or file a line per phase.
                    if terminal, line != shown { printError("\r\(line)   ", terminator: "") }
                    if !terminal, job.phase != shown { printError(job.phase ?? "running") }
                    shown = terminal ? line : (job.phase ?? "")
                }
                guard Date() < deadline else {
                    throw ValidationError("job \(id) still running after \(Int(timeout)) s; it goes on ('agentctl learn --last')")
                }
                Thread.sleep(forTimeInterval: 0.2)
            }
        }
    }

    static func describe(_ j: LearnJob) {
        func pct(_ x: Double) -> String { String(format: "%.1f%%", x * 100) }
        print("job \(j.job) (\(j.trigger)\(j.dryRun ? ", dry run" : "")): \(j.state)\(j.decision.map { " — \($0)" } ?? "")")
        if let b = j.before {
            let a = j.after.map { " → new \(pct($0.newAccuracy)), old \(pct($0.oldAccuracy))" } ?? ""
            print("  accuracy: new \(pct(b.newAccuracy)), old \(pct(b.oldAccuracy))\(a)")
        }
        if let steps = j.steps, let lambda = j.lambda, let alpha = j.alpha {
            print("  training: \(steps) steps, λ \(lambda), α \(alpha), \(j.labels ?? 0) labels")
        }
        if let v = j.version { print("  version \(v) registered and serving (from version \(j.baseVersion ?? 0))") }
        if let s = j.seconds { print("  took \(String(format: "%.2f", s)) s\(j.cpuSeconds.map { String(format: " (%.2f s CPU)", $0) } ?? "")") }
        if let r = j.reason { print("  \(r)") }
    }
}

struct ReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "What the replay memory holds: samples per class and per source, bytes, new labels waiting.",
        discussion: """
            Sources: seed (labelled rows from the model file, 'agentctl model prepare
            --replay-seed'), feedback (labels an accepted update learnt from), live (unlabelled
            answered rows with the serving model's logits, kept while drift is 'ok', for
            distillation). Bounded by replay.capacity and replay.max_bytes; replay.policy
            decides what stays.
            """)
    @OptionGroup var socket: SocketOption
    @Flag(help: "Print as JSON.") var json = false

    func run() throws {
        try talkingToDaemon {
            let r = try socket.client.replay()
            if json { printJSON(r); return }
            print("replay memory: \(r.samples) of \(r.capacity) samples, \(r.bytes) bytes, policy \(r.policy)")
            print("sources: " + ["seed", "feedback", "live"].map { "\($0) \(r.perSource[$0] ?? 0)" }.joined(separator: ", "))
            let classes = r.perClass.keys.sorted { (Int($0) ?? Int.max, $0) < (Int($1) ?? Int.max, $1) }
            if !classes.isEmpty {
                print(table(["class", "labelled samples"], classes.map { [$0, String(r.perClass[$0]!)] }, rightAligned: [1]))
            }
            print("new labels waiting for an update: \(r.newLabels)")
        }
    }
}
