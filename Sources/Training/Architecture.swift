import Inference
import ModelFile
import Tensor

/// Why an `--arch` string was refused.
public struct ArchitectureError: Error, CustomStringConvertible, Sendable {
    public let arch: String
    public let message: String
    public var description: String { "arch '\(arch)': \(message)" }
    public init(arch: String, message: String) {
        self.arch = arch
        self.message = message
    }
}

/// The `--arch` grammar of `agentctl model train`.
///
///     mlp:IN-H1-H2-…-CLASSES          dense layers with ReLU between, softmax at the end
///     cnn:CxHxW-TOKEN-…-CLASSES       tokens, left to right:
///         cN[kK][sS][pP]   conv2d, N filters, K×K kernel (3), stride S (1), padding P (K/2), then ReLU
///         mK[sS]           max pool K×K, stride S (K)
///         aK[sS]           average pool K×K, stride S (K)
///         g                global average pool
///         fN               dense N then ReLU (a flatten is inserted before the first one)
///         CLASSES          the last token: dense to the class count, softmax
public enum Architecture {
    public static let grammar = """
        mlp:IN-H1-...-CLASSES     e.g. mlp:64-256-256-10 (ReLU between dense layers)
        cnn:CxHxW-TOKENS-CLASSES  e.g. cnn:1x8x8-c32-m2-c64-g-10, cnn:1x28x28-c16k5-m2-c32k5-m2-f64-10
          cN[kK][sS][pP]  conv2d with N filters, kernel K (3), stride S (1), padding P (K/2), then ReLU
          mK[sS] / aK[sS] max / average pool K x K, stride S (K)
          g               global average pool
          fN              dense N then ReLU
          CLASSES         last token: dense to the class count, then softmax
        """

    /// Builds a freshly initialised network (He-uniform weights, zero biases) from `spec`.
    public static func build(_ spec: String, seed: UInt64, name: String = "model", labels: [String]? = nil,
                             preprocessing: Preprocessing = .identity) throws -> Network {
        func fail(_ message: String) -> ArchitectureError { ArchitectureError(arch: spec, message: message) }
        let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
        guard parts.count == 2, ["mlp", "cnn"].contains(parts[0]) else {
            throw fail("expected 'mlp:…' or 'cnn:…'")
        }
        let tokens = parts[1].split(separator: "-", omittingEmptySubsequences: false).map(String.init)
        guard tokens.count >= 2 else { throw fail("needs an input and a class count at least") }
        var rng = SeededGenerator(seed: seed)
        var layers: [NetworkLayer] = []
        var shape: [Int]
        var counters = (conv: 0, fc: 0)

        func dense(_ outputs: Int, last: Bool) {
            if shape.count != 1 {
                layers.append(NetworkLayer(kind: .flatten, inputShape: shape, outputShape: [shape.reduce(1, *)]))
                shape = [shape.reduce(1, *)]
            }
            counters.fc += 1
            let w = Tensor(zeros: [outputs, shape[0]])
            initialise(w, fanIn: shape[0], rng: &rng)
            layers.append(NetworkLayer(kind: .dense, inputShape: shape, outputShape: [outputs], weight: w,
                                       bias: Tensor(zeros: [outputs]), weightName: "fc\(counters.fc).weight",
                                       biasName: "fc\(counters.fc).bias"))
            shape = [outputs]
            let after: NetworkLayer.Kind = last ? .softmax : .relu
            layers.append(NetworkLayer(kind: after, inputShape: shape, outputShape: shape))
        }

        if parts[0] == "mlp" {
            let sizes = tokens.map { Int($0) }
            guard sizes.allSatisfy({ ($0 ?? 0) > 0 }) else {
                throw fail("every size must be a positive integer, e.g. mlp:64-256-256-10")
            }
            shape = [sizes[0]!]
            for (i, n) in sizes.dropFirst().enumerated() { dense(n!, last: i == sizes.count - 2) }
        } else {
            let dims = tokens[0].split(separator: "x").map { Int($0) }
            guard dims.count == 3, dims.allSatisfy({ ($0 ?? 0) > 0 }) else {
                throw fail("input '\(tokens[0])' must be CxHxW, e.g. 1x8x8")
            }
            shape = dims.map { $0! }
            for (i, token) in tokens.enumerated().dropFirst() {
                let isLast = i == tokens.count - 1
                if isLast {
                    guard let classes = Int(token), classes > 0 else {
                        throw fail("the last token '\(token)' must be the class count")
                    }
                    dense(classes, last: true)
                    break
                }
                guard let kind = token.first else { throw fail("empty token at position \(i + 1)") }
                let fields = try parseFields(String(token.dropFirst()), token: token, fail: fail)
                switch kind {
                case "c":
                    guard shape.count == 3 else { throw fail("conv token '\(token)' after the features were flattened") }
                    guard let n = fields.value, n > 0 else { throw fail("conv token '\(token)' needs a filter count, e.g. c16") }
                    let k = fields["k"] ?? 3, s = fields["s"] ?? 1, p = fields["p"] ?? k / 2
                    guard k > 0, s > 0, p >= 0 else { throw fail("conv token '\(token)' has a non-positive size") }
                    let oh = Op.convOutput(shape[1], kernel: k, stride: s, padding: p)
                    let ow = Op.convOutput(shape[2], kernel: k, stride: s, padding: p)
                    guard oh > 0, ow > 0, shape[1] + 2 * p >= k, shape[2] + 2 * p >= k else {
                        throw fail("conv token '\(token)': kernel \(k) does not fit input \(formatShape(shape))")
                    }
                    counters.conv += 1
                    let w = Tensor(zeros: [n, shape[0], k, k])
                    initialise(w, fanIn: shape[0] * k * k, rng: &rng)
                    let out = [n, oh, ow]
                    layers.append(NetworkLayer(kind: .conv2d(stride: Window(s, s), padding: Window(p, p)), inputShape: shape,
                                               outputShape: out, weight: w, bias: Tensor(zeros: [n]),
                                               weightName: "conv\(counters.conv).weight", biasName: "conv\(counters.conv).bias"))
                    layers.append(NetworkLayer(kind: .relu, inputShape: out, outputShape: out))
                    shape = out
                case "m", "a":
                    guard shape.count == 3 else { throw fail("pool token '\(token)' after the features were flattened") }
                    guard let k = fields.value, k > 0 else { throw fail("pool token '\(token)' needs a kernel size, e.g. m2") }
                    let s = fields["s"] ?? k
                    guard k <= shape[1], k <= shape[2], s > 0 else {
                        throw fail("pool token '\(token)': window \(k) does not fit input \(formatShape(shape))")
                    }
                    let out = [shape[0], Op.convOutput(shape[1], kernel: k, stride: s, padding: 0),
                               Op.convOutput(shape[2], kernel: k, stride: s, padding: 0)]
                    let kind: NetworkLayer.Kind = kind == "m"
                        ? .maxpool2d(kernel: Window(k, k), stride: Window(s, s))
                        : .avgpool2d(kernel: Window(k, k), stride: Window(s, s))
                    layers.append(NetworkLayer(kind: kind, inputShape: shape, outputShape: out))
                    shape = out
                case "g":
                    guard shape.count == 3, token == "g" else { throw fail("token '\(token)': 'g' takes no size and needs an image") }
                    layers.append(NetworkLayer(kind: .globalavgpool, inputShape: shape, outputShape: [shape[0]]))
                    shape = [shape[0]]
                case "f":
                    guard let n = fields.value, n > 0 else { throw fail("dense token '\(token)' needs a size, e.g. f64") }
                    dense(n, last: false)
                default:
                    throw fail("unknown token '\(token)'; tokens are cN, mK, aK, g, fN and the class count")
                }
            }
        }
        let classes = shape.reduce(1, *)
        if let labels, labels.count != classes {
            throw fail("ends in \(classes) classes but the data has \(labels.count)")
        }
        return Network(name: name, inputShape: layers.first?.inputShape ?? shape,
                       labels: labels ?? (0..<classes).map(String.init), preprocessing: preprocessing, layers: layers)
    }

    private struct Fields {
        var value: Int?
        var named: [Character: Int] = [:]
        subscript(_ key: Character) -> Int? { named[key] }
    }

    /// "16k5s2" → value 16, k 5, s 2.
    private static func parseFields(_ text: String, token: String, fail: (String) -> ArchitectureError) throws -> Fields {
        var fields = Fields()
        var key: Character? = nil
        var digits = ""
        func flush() throws {
            guard !digits.isEmpty else {
                if key != nil { throw fail("token '\(token)': '\(key!)' needs a number") }
                return
            }
            guard let v = Int(digits) else { throw fail("token '\(token)': '\(digits)' is not a number") }
            if let key {
                guard "ksp".contains(key), fields.named[key] == nil else { throw fail("token '\(token)': unexpected '\(key)'") }
                fields.named[key] = v
            } else {
                fields.value = v
            }
            digits = ""
        }
        for ch in text {
            if ch.isNumber { digits.append(ch) } else { try flush(); key = ch }
        }
        try flush()
        return fields
    }

    /// He-uniform: U(−√(6/fan_in), √(6/fan_in)), suited to ReLU layers.
    static func initialise(_ w: Tensor, fanIn: Int, rng: inout SeededGenerator) {
        let limit = (6 / Float(fanIn)).squareRoot()
        for i in 0..<w.count { w[i] = rng.nextFloat(limit: limit) }
    }
}
