/// A block of 64-byte aligned memory with one owner.
///
/// Tensors are views into a `Storage`; a model file's bytes are read into one `Storage` once and
/// every F32 tensor of the file points into it, so weights are never copied after the read.
public final class Storage: @unchecked Sendable {
    public static let alignment = 64
    public let base: UnsafeMutableRawPointer
    public let byteCount: Int

    public init(byteCount: Int) {
        self.byteCount = byteCount
        // Allocate at least one line so `base` is never dangling for empty tensors.
        self.base = UnsafeMutableRawPointer.allocate(
            byteCount: max(byteCount, Storage.alignment), alignment: Storage.alignment)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: max(byteCount, Storage.alignment))
    }

    deinit { base.deallocate() }

    public var bytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base, count: byteCount)
    }
}

/// Zeroed floats on a 64-byte boundary (a cache line, and one AVX-512 vector); free with `deallocate()`.
public func allocateAlignedFloats(_ count: Int) -> UnsafeMutablePointer<Float> {
    let n = max(count, 16)
    let raw = UnsafeMutableRawPointer.allocate(byteCount: n * MemoryLayout<Float>.stride, alignment: Storage.alignment)
    return raw.initializeMemory(as: Float.self, repeating: 0, count: n)
}
