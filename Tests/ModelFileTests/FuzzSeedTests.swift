import Foundation
import ModelFile
import Testing

/// The model fuzzer's hand-made seeds (tools/fuzz/make_model_seeds.py) must stay valid models, or
/// the fuzzer starts from files the validator refuses and never reaches the network and plans.
@Suite struct FuzzSeedTests {
    static let seeds = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Fuzz/model").standardized

    @Test(arguments: ["mlp", "cnn-batchnorm", "cnn-pools", "mlp-quantized", "mlp-prepared"])
    func seedIsAValidModel(_ name: String) throws {
        let model = try ModelFile.load(path: Self.seeds.appendingPathComponent("\(name).safetensors").path)
        #expect(!model.layers.isEmpty)
        #expect((name == "mlp-quantized") == (model.manifest.quantization != nil))
        // The prepared seed (agentctl model prepare) carries a drift reference for the fuzzer to mutate.
        #expect((name == "mlp-prepared") == (model.manifest.driftReference != nil))
        // …and the learning sections (EWC anchor, replay seed).
        #expect((name == "mlp-prepared") == (model.manifest.ewc != nil && model.manifest.replaySeed != nil))
    }
}
