import AgentConfig
import AgentCore
import ArgumentParser
import Foundation
import Logging
import Metrics
import Prometheus

@main
struct Agentd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agentd",
        abstract: "The edge-agent daemon: serves inference to local programs over a Unix socket.",
        discussion: """
            Runs in the foreground (systemd Type=notify). SIGTERM drains and exits 0; SIGHUP reloads
            the reloadable keys and the model. Query it with 'agentctl status'.
            """,
        version: agentVersion)

    @Option(help: "Configuration file (TOML; every key has a default, see etc/agentd.toml).")
    var config: String = "/etc/agentd/agentd.toml"

    func run() async throws {
        let cfg: AgentConfig
        do {
            cfg = try AgentConfig.load(path: config)
        } catch {
            FileHandle.standardError.write(Data("agentd: \(error)\n".utf8))
            throw ExitCode(78)  // EX_CONFIG: systemd does not restart in a loop on a broken config
        }
        let level = Logger.Level(rawValue: cfg.agent.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let logger = Logger(label: "agentd")
        let agent: Agent
        do {
            agent = try buildAgent(config: cfg, configPath: config, logger: logger, registry: registry)
        } catch {
            FileHandle.standardError.write(Data("agentd: \(error)\n".utf8))
            throw ExitCode(1)
        }
        try await agent.run()
        logger.info("agentd stopped")
    }
}
