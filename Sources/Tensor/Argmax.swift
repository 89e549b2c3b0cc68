extension Collection where Element: Comparable {
    /// The offset (from `startIndex`) of the first largest element: a class index from a row of
    /// scores. 0 for an empty collection.
    public func argmax() -> Int {
        var best = 0, offset = 0
        var bestValue: Element?
        for v in self {
            if bestValue == nil || bestValue! < v {
                bestValue = v
                best = offset
            }
            offset += 1
        }
        return best
    }
}
