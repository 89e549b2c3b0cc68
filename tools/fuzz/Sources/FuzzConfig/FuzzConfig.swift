import AgentConfig

/// agentd's TOML configuration (toml++ through TOMLKit, then AgentConfig's checks): any text is
/// either a valid config or a list of problems, never a crash.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    // AgentConfig.load refuses text that is not UTF-8 before parsing; only UTF-8 reaches parse.
    guard let text = String(validating: UnsafeBufferPointer(start: data, count: size), as: UTF8.self) else { return 0 }
    do {
        let config = try AgentConfig.parse(text, file: "fuzz.toml")
        precondition((1...4096).contains(config.serving.maxBatchSize) && (0...256).contains(config.serving.workers),
                     "accepted a config outside the checked ranges")
    } catch let errors as ConfigErrors {
        precondition(!errors.problems.isEmpty, "refused without naming a problem")
    } catch {
        fatalError("parse threw \(type(of: error)), not ConfigErrors: \(error)")
    }
    return 0
}
