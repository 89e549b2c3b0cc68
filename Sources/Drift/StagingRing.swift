import Synchronization
import Tensor

/// A single-producer, single-consumer ring of fixed-size float rows. The producer (one inference
/// worker) never waits: a full ring refuses the row. The consumer is whoever holds the monitor's
/// lock.
final class StagingRing: @unchecked Sendable {
    let capacity: Int
    let stride: Int
    private let storage: UnsafeMutablePointer<Float>
    /// Rows written (producer) and rows read (consumer), ever; head − tail is the fill.
    private let head = Atomic<Int>(0)
    private let tail = Atomic<Int>(0)

    init(capacity: Int, stride: Int) {
        self.capacity = capacity
        self.stride = stride
        storage = allocateAlignedFloats(capacity * stride)
    }

    deinit { storage.deallocate() }

    /// Producer: copies one row from its parts; false when the ring is full.
    @inline(__always)
    func push(_ parts: (UnsafePointer<Float>, Int), _ b: (UnsafePointer<Float>, Int), _ c: (UnsafePointer<Float>?, Int)) -> Bool {
        let h = head.load(ordering: .relaxed)
        if h - tail.load(ordering: .acquiring) >= capacity { return false }
        let slot = storage + (h % capacity) * stride
        slot.update(from: parts.0, count: parts.1)
        (slot + parts.1).update(from: b.0, count: b.1)
        if let p = c.0 { (slot + parts.1 + b.1).update(from: p, count: c.1) }
        head.store(h + 1, ordering: .releasing)
        return true
    }

    /// Consumer: hands every row written so far to `body`, then frees their slots.
    @inline(__always)
    func drain(_ body: (UnsafePointer<Float>) -> Void) {
        let t = tail.load(ordering: .relaxed), h = head.load(ordering: .acquiring)
        guard h > t else { return }
        for i in t..<h { body(storage + (i % capacity) * stride) }
        tail.store(h, ordering: .releasing)
    }
}
