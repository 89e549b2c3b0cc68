/// A manifest layer after validation: its operation with typed parameters and the shapes of one
/// sample before and after it.
public struct Layer: Sendable, Equatable {
    public let index: Int
    public let op: Op
    public let inputShape: [Int]
    public let outputShape: [Int]

    public init(index: Int, op: Op, inputShape: [Int], outputShape: [Int]) {
        self.index = index
        self.op = op
        self.inputShape = inputShape
        self.outputShape = outputShape
    }
}

public struct Window: Sendable, Equatable {
    public var height: Int
    public var width: Int
    public init(_ height: Int, _ width: Int) {
        self.height = height
        self.width = width
    }
}

public enum Op: Sendable, Equatable {
    case dense(weight: String, bias: String?)
    case conv2d(weight: String, bias: String?, stride: Window, padding: Window)
    case maxpool2d(kernel: Window, stride: Window)
    case avgpool2d(kernel: Window, stride: Window)
    case globalavgpool
    case flatten
    case relu
    case relu6
    case leakyrelu(alpha: Float)
    case batchnorm(weight: String, bias: String, mean: String, variance: String, eps: Float)
    case softmax

    public var name: String {
        switch self {
        case .dense: "dense"
        case .conv2d: "conv2d"
        case .maxpool2d: "maxpool2d"
        case .avgpool2d: "avgpool2d"
        case .globalavgpool: "globalavgpool"
        case .flatten: "flatten"
        case .relu: "relu"
        case .relu6: "relu6"
        case .leakyrelu: "leakyrelu"
        case .batchnorm: "batchnorm"
        case .softmax: "softmax"
        }
    }

    public static let knownNames = ["dense", "conv2d", "maxpool2d", "avgpool2d", "globalavgpool", "flatten",
                                    "relu", "relu6", "leakyrelu", "batchnorm", "softmax"]

    /// Tensor names this op reads.
    public var tensorNames: [String] {
        switch self {
        case .dense(let w, let b), .conv2d(let w, let b, _, _): [w] + (b.map { [$0] } ?? [])
        case .batchnorm(let w, let b, let m, let v, _): [w, b, m, v]
        default: []
        }
    }

    /// Output shape of one sample (window arithmetic as PyTorch with `ceil_mode=False`).
    public static func convOutput(_ size: Int, kernel: Int, stride: Int, padding: Int) -> Int {
        (size + 2 * padding - kernel) / stride + 1
    }
}
