import Foundation

/// Packed weights shared by every plan built from one immutable model: each serving worker's
/// plan, the plans rebuilt for a larger batch, and the adaptive plan's FP32 fallback. A layer is
/// packed once, by the first plan that needs it, and held as long as the model is.
///
/// Only for a model whose weights no longer change (a serving model); a network being trained
/// builds its plans without one.
public final class PackedWeightCache: @unchecked Sendable {
    private let lock = NSLock()
    private var entries: [String: AnyObject] = [:]
    private var total = 0

    public init() {}

    /// The entry under `key`, made (and its `bytes` counted) on first use.
    public func value<T: AnyObject>(_ key: String, bytes: (T) -> Int, make: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        if let hit = entries[key] {
            guard let typed = hit as? T else { preconditionFailure("packed weight cache: \(key) holds a \(type(of: hit)), not a \(T.self)") }
            return typed
        }
        let made = make()
        entries[key] = made
        total += bytes(made)
        return made
    }

    /// The entry under `key`, or nil when `make` found nothing to pack (a kernel that does not
    /// apply to this layer); either answer is remembered.
    public func optionalValue<T: AnyObject>(_ key: String, bytes: (T) -> Int, make: () -> T?) -> T? {
        lock.lock()
        defer { lock.unlock() }
        if let hit = entries[key] {
            if hit is NSNull { return nil }
            guard let typed = hit as? T else { preconditionFailure("packed weight cache: \(key) holds a \(type(of: hit)), not a \(T.self)") }
            return typed
        }
        guard let made = make() else {
            entries[key] = NSNull()
            return nil
        }
        entries[key] = made
        total += bytes(made)
        return made
    }

    /// Bytes of every packed weight held, counted once however many plans share them.
    public var bytes: Int {
        lock.lock()
        defer { lock.unlock() }
        return total
    }
}

extension Optional where Wrapped == PackedWeightCache {
    /// Through the cache when there is one; made anew otherwise.
    public func value<T: AnyObject>(_ key: @autoclosure () -> String, bytes: (T) -> Int, make: () -> T) -> T {
        guard let cache = self else { return make() }
        return cache.value(key(), bytes: bytes, make: make)
    }

    public func optionalValue<T: AnyObject>(_ key: @autoclosure () -> String, bytes: (T) -> Int, make: () -> T?) -> T? {
        guard let cache = self else { return make() }
        return cache.optionalValue(key(), bytes: bytes, make: make)
    }
}
