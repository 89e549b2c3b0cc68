/// Why a model file was refused: one line that names the file, the place in it, and the fault.
public struct ModelFileError: Error, CustomStringConvertible, Equatable, Sendable {
    public let file: String
    /// The tensor, layer or header field at fault ("tensor 'fc1.weight'", "layer 2 (dense)").
    public let location: String?
    public let message: String

    public init(file: String, location: String? = nil, _ message: String) {
        self.file = file
        self.location = location
        self.message = message
    }

    public var description: String {
        if let location { return "\(file): \(location): \(message)" }
        return "\(file): \(message)"
    }
}
