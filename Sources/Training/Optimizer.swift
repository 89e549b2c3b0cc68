import Tensor

/// Update rules over a fixed list of (parameter, gradient) pairs; state is allocated once.
public enum OptimizerKind: Sendable, Equatable {
    /// SGD with momentum; weight decay is added to the gradient (L2), as PyTorch's `SGD`.
    case sgd(learningRate: Float, momentum: Float, weightDecay: Float)
    /// Adam; weight decay is decoupled (AdamW), as PyTorch's `AdamW`.
    case adam(learningRate: Float, beta1: Float, beta2: Float, epsilon: Float, weightDecay: Float)

    public static func adam(learningRate: Float, weightDecay: Float = 0) -> OptimizerKind {
        .adam(learningRate: learningRate, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: weightDecay)
    }
}

public final class Optimizer: @unchecked Sendable {
    public let kind: OptimizerKind
    private let pairs: [(parameter: Tensor, gradient: Tensor)]
    private let first: [Tensor]
    private let second: [Tensor]
    public private(set) var steps = 0
    /// Multiplies the learning rate (schedules set it between steps).
    public var learningRateScale: Float = 1

    public init(kind: OptimizerKind, pairs: [(parameter: Tensor, gradient: Tensor)]) {
        self.kind = kind
        self.pairs = pairs
        first = pairs.map { Tensor(zeros: $0.parameter.shape) }
        if case .adam = kind {
            second = pairs.map { Tensor(zeros: $0.parameter.shape) }
        } else {
            second = []
        }
    }

    public func step() {
        steps += 1
        switch kind {
        case .sgd(let lr0, let momentum, let decay):
            let lr = lr0 * learningRateScale
            for (i, pair) in pairs.enumerated() {
                let w = pair.parameter.pointer, g = pair.gradient.pointer, v = first[i].pointer
                for j in 0..<pair.parameter.count {
                    let grad = g[j] + decay * w[j]
                    v[j] = momentum * v[j] + grad
                    w[j] -= lr * v[j]
                }
            }
        case .adam(let lr0, let b1, let b2, let eps, let decay):
            let lr = lr0 * learningRateScale
            let c1 = 1 - powf(b1, Float(steps)), c2 = 1 - powf(b2, Float(steps))
            let stepSize = lr / c1, inv2 = 1 / c2.squareRoot()
            for (i, pair) in pairs.enumerated() {
                let w = pair.parameter.pointer, g = pair.gradient.pointer, m = first[i].pointer, v = second[i].pointer
                for j in 0..<pair.parameter.count {
                    let grad = g[j]
                    m[j] = b1 * m[j] + (1 - b1) * grad
                    v[j] = b2 * v[j] + (1 - b2) * grad * grad
                    w[j] -= lr * decay * w[j]
                    w[j] -= stepSize * m[j] / ((v[j]).squareRoot() * inv2 + eps)
                }
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
