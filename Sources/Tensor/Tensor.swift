/// A dense row-major F32 tensor: a shape and a view into a `Storage`.
///
/// `Tensor` has reference semantics for its elements (two copies of a `Tensor` share storage);
/// use `copy()` for an independent one.
public struct Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let storage: Storage
    /// Offset of element 0, in bytes from `storage.base`.
    public let byteOffset: Int

    public var count: Int { shape.reduce(1, *) }
    public var rank: Int { shape.count }

    /// A zero-filled tensor with storage of its own.
    public init(zeros shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        self.storage = Storage(byteCount: shape.reduce(1, *) * MemoryLayout<Float>.stride)
        self.byteOffset = 0
    }

    public init(shape: [Int], values: [Float]) {
        precondition(shape.reduce(1, *) == values.count, "shape \(shape) needs \(shape.reduce(1, *)) values, got \(values.count)")
        self.init(zeros: shape)
        values.withUnsafeBufferPointer { src in
            pointer.update(from: src.baseAddress!, count: values.count)
        }
    }

    /// A view of `shape` at `byteOffset` in `storage`; the offset must be 4-byte aligned.
    public init(shape: [Int], storage: Storage, byteOffset: Int) {
        precondition(byteOffset % MemoryLayout<Float>.alignment == 0, "misaligned F32 view")
        precondition(byteOffset + shape.reduce(1, *) * 4 <= storage.byteCount, "view outside its storage")
        self.shape = shape
        self.storage = storage
        self.byteOffset = byteOffset
    }

    public var pointer: UnsafeMutablePointer<Float> {
        (storage.base + byteOffset).assumingMemoryBound(to: Float.self)
    }

    public var buffer: UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: pointer, count: count)
    }

    public var values: [Float] { Array(buffer) }

    public subscript(index: Int) -> Float {
        get { pointer[index] }
        nonmutating set { pointer[index] = newValue }
    }

    public func copy() -> Tensor {
        let t = Tensor(zeros: shape)
        t.pointer.update(from: pointer, count: count)
        return t
    }

    /// The same elements seen with another shape of equal element count.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        precondition(newShape.reduce(1, *) == count, "cannot reshape \(shape) to \(newShape)")
        return Tensor(shape: newShape, storage: storage, byteOffset: byteOffset)
    }

    public func fill(_ value: Float) {
        pointer.update(repeating: value, count: count)
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        "Tensor(\(shape.map(String.init).joined(separator: "x")))"
    }
}

/// Formats a shape as `[a, b, c]`, the way error messages and `inspect` print it.
public func formatShape(_ shape: [Int]) -> String {
    "[" + shape.map(String.init).joined(separator: ", ") + "]"
}
