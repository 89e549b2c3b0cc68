import Foundation

/// Why a data file was refused: names the file and, where it applies, the line.
public struct DataSetError: Error, CustomStringConvertible, Equatable, Sendable {
    public let file: String
    public let line: Int?
    public let message: String

    public init(file: String, line: Int? = nil, _ message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    public var description: String {
        if let line { return "\(file):\(line): \(message)" }
        return "\(file): \(message)"
    }
}

/// Samples from a CSV file: a header row, features first, the class label in a last column named
/// `label`. Rows are stored flat, one after another.
public struct DataSet: Sendable {
    public var features: [Float]
    public var featureCount: Int
    /// Class index of each row (into `classNames`), or nil for unlabelled data.
    public var labels: [Int]?
    public var classNames: [String]
    public var count: Int { featureCount == 0 ? 0 : features.count / featureCount }

    public init(features: [Float], featureCount: Int, labels: [Int]?, classNames: [String]) {
        self.features = features
        self.featureCount = featureCount
        self.labels = labels
        self.classNames = classNames
    }

    /// Loads a CSV file.
    /// - Parameters:
    ///   - featureCount: the model's input size, when known; a different column count is refused.
    ///   - classNames: the model's labels, when known; a label outside them is refused. When nil the
    ///     classes are the distinct labels found, sorted numerically when they are all integers.
    ///   - requireLabels: refuse a file without a `label` column.
    public static func load(path: String, featureCount expected: Int? = nil, classNames known: [String]? = nil,
                            requireLabels: Bool = true) throws -> DataSet {
        guard let data = FileManager.default.contents(atPath: path) else {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
                throw DataSetError(file: path, isDirectory.boolValue ? "is a directory, not a CSV file" : "cannot be read")
            }
            throw DataSetError(file: path, "no such file")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw DataSetError(file: path, "is not UTF-8 text")
        }
        return try parse(text, file: path, featureCount: expected, classNames: known, requireLabels: requireLabels)
    }

    public static func parse(_ text: String, file: String, featureCount expected: Int? = nil, classNames known: [String]? = nil,
                             requireLabels: Bool = true) throws -> DataSet {
        // "\r\n" is one Character in Swift, and a newline like "\n".
        var lines = text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline)
        while let last = lines.last, last.allSatisfy(\.isWhitespace) { lines.removeLast() }
        guard let headerLine = lines.first, !headerLine.allSatisfy(\.isWhitespace) else {
            throw DataSetError(file: file, "is empty; expected a header row and at least one sample")
        }
        let header = headerLine.split(separator: ",", omittingEmptySubsequences: false).map {
            $0.trimmingCharacters(in: .whitespaces)
        }
        let hasLabel = header.last == "label"
        if let i = header.firstIndex(of: "label"), i != header.count - 1 {
            throw DataSetError(file: file, line: 1, "column 'label' must be the last column, found at column \(i + 1)")
        }
        if requireLabels && !hasLabel {
            throw DataSetError(file: file, line: 1, "no 'label' column; the last header field must be 'label'")
        }
        let featureCount = header.count - (hasLabel ? 1 : 0)
        guard featureCount > 0 else { throw DataSetError(file: file, line: 1, "header has no feature columns") }
        if let expected, featureCount != expected {
            throw DataSetError(file: file, line: 1, "has \(featureCount) feature columns but the model takes \(expected)")
        }
        guard lines.count > 1 else { throw DataSetError(file: file, "has a header but no samples") }

        var features: [Float] = []
        features.reserveCapacity((lines.count - 1) * featureCount)
        var rawLabels: [Substring] = []
        for (i, line) in lines.enumerated().dropFirst() {
            let lineNumber = i + 1
            let fields = line.split(separator: ",", omittingEmptySubsequences: false)
            guard fields.count == header.count else {
                throw DataSetError(file: file, line: lineNumber, "expected \(header.count) columns, found \(fields.count)")
            }
            for (c, field) in fields.prefix(featureCount).enumerated() {
                let trimmed = field.trimmingCharacters(in: .whitespaces)
                guard let v = Float(trimmed) else {
                    throw DataSetError(file: file, line: lineNumber, "column \(c + 1) ('\(header[c])'): '\(trimmed)' is not a number")
                }
                guard v.isFinite else {
                    throw DataSetError(file: file, line: lineNumber, "column \(c + 1) ('\(header[c])'): \(trimmed) is not finite")
                }
                features.append(v)
            }
            if hasLabel {
                let label = fields[featureCount].trimmingCharacters(in: .whitespaces)
                guard !label.isEmpty else { throw DataSetError(file: file, line: lineNumber, "label is empty") }
                rawLabels.append(Substring(label))
            }
        }

        var labels: [Int]? = nil
        var classNames = known ?? []
        if hasLabel {
            if known == nil {
                let distinct = Set(rawLabels.map(String.init))
                if distinct.allSatisfy({ Int($0) != nil }) {
                    classNames = distinct.sorted { Int($0)! < Int($1)! }
                } else {
                    classNames = distinct.sorted()
                }
            }
            var index: [String: Int] = [:]
            for (i, n) in classNames.enumerated() { index[n] = i }
            labels = try rawLabels.enumerated().map { (i, l) in
                guard let c = index[String(l)] else {
                    throw DataSetError(file: file, line: i + 2,
                                       "label '\(l)' is not one of the model's labels (\(classNames.prefix(12).joined(separator: ", ")))")
                }
                return c
            }
        }
        return DataSet(features: features, featureCount: featureCount, labels: labels, classNames: classNames)
    }

    public func rows(_ indices: [Int]) -> DataSet {
        var f: [Float] = []
        f.reserveCapacity(indices.count * featureCount)
        for i in indices { f.append(contentsOf: features[(i * featureCount)..<((i + 1) * featureCount)]) }
        return DataSet(features: f, featureCount: featureCount, labels: labels.map { l in indices.map { l[$0] } },
                       classNames: classNames)
    }

    /// The fixed split every command uses: row i is a test row when i % 5 == 4 (20%), else training.
    public func split() -> (train: DataSet, test: DataSet) {
        let all = Array(0..<count)
        return (rows(all.filter { $0 % 5 != 4 }), rows(all.filter { $0 % 5 == 4 }))
    }
}
