import AgentAPI
import Foundation
import Learning
import ServiceLifecycle
import Store

/// Keeps the replay memory in step with the serving model, files the live rows, starts
/// automatic updates, and on shutdown cancels a running job and waits for it to record that.
struct LearnService: Service {
    let agent: Agent
    func run() async throws {
        let learner = agent.learner
        try? await cancelWhenGracefulShutdown {
            var tick = 0
            while !Task.isCancelled {
                try await Task.sleep(for: .seconds(1))
                tick += 1
                let triggerNow = tick % 2 == 0
                await Blocking.run(on: Blocking.learner) {
                    do {
                        try learner.syncWithServingModel()
                    } catch {
                        agent.logger.warning("replay memory not indexed", metadata: ["error": "\(StoreError(error))"])
                    }
                    learner.flushLiveRows()
                    if triggerNow { learner.autoTrigger() }
                }
            }
        }
        // The job checks for cancellation every step; its record is written before agentd goes on.
        await Blocking.run(on: Blocking.learner) { learner.cancelAndWait(timeout: 10) }
    }
}

extension Blocking {
    /// The learner's bookkeeping (replay writes, triggers); the update itself has its own thread.
    static let learner = DispatchQueue(label: "agentd.learner")
}
