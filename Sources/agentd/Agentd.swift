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
        let logLevel = LogLevelControl(Logger.Level(rawValue: cfg.agent.logLevel) ?? .info)
        LoggingSystem.bootstrap { label in ControlledLogHandler(label: label, control: logLevel) }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let logger = Logger(label: "agentd")
        do {
            let agent = try buildAgent(config: cfg, configPath: config, logger: logger, logLevel: logLevel, registry: registry)
            try await agent.run()
        } catch {
            FileHandle.standardError.write(Data("agentd: \(error)\n".utf8))
            throw ExitCode((error as? StartupError)?.isConfiguration == true ? 78 : 1)
        }
        logger.info("agentd stopped")
    }
}
