/// How protobuf names become Swift names.
enum SwiftNaming {
    /// Swift keywords that must be escaped with backticks when used as identifiers.
    static let keywords: Set<String> = [
        "associatedtype", "class", "deinit", "enum", "extension", "fileprivate", "func", "import", "init", "inout",
        "internal", "let", "open", "operator", "private", "precedencegroup", "protocol", "public", "rethrows", "static",
        "struct", "subscript", "typealias", "var", "break", "case", "catch", "continue", "default", "defer", "do",
        "else", "fallthrough", "for", "guard", "if", "in", "repeat", "return", "throw", "switch", "where", "while",
        "as", "false", "is", "nil", "super", "throws", "true", "try", "_", "package", "consume", "borrowing",
        "consuming", "copy", "discard", "each", "any", "some", "await", "async",
    ]

    /// Member names generated code defines itself; a field with one of these names gets a trailing underscore.
    static let reservedMembers: Set<String> = [
        "unknownFields", "hashValue", "protoMessageName", "encodedSize", "encode", "decodeMessage", "self", "Type",
        "Protocol", "init", "serializedBytes", "serialize", "merge", "hash", "rawValue", "allCases", "descriptor",
    ]

    /// Type names that cannot be used for a nested type; they get a trailing underscore.
    static let reservedTypeNames: Set<String> = [
        "Type", "Protocol", "Self", "Any", "Sendable", "Hashable", "Equatable", "String", "Int32", "Int64", "UInt32",
        "UInt64", "Bool", "Float", "Double", "Array", "Dictionary", "Optional", "Method", "Error",
    ]

    /// `foo_bar` → `FooBar`; `v1` → `V1`.
    static func upperCamel(_ name: String) -> String {
        name.split(separator: "_").map { part in part.prefix(1).uppercased() + part.dropFirst() }.joined()
    }

    /// `created_at_unix_nanos` → `createdAtUnixNanos`; `URL` → `url`; `FooBar` → `fooBar`.
    static func lowerCamel(_ name: String) -> String {
        let parts = name.split(separator: "_")
        guard let first = parts.first else { return name }
        let head =
            first.allSatisfy { !$0.isLowercase } ? first.lowercased() : first.prefix(1).lowercased() + first.dropFirst()
        return head + parts.dropFirst().map { part in part.prefix(1).uppercased() + part.dropFirst() }.joined()
    }

    /// `IN_PROGRESS` → `inProgress`.
    static func lowerCamelFromUpperSnake(_ name: String) -> String {
        let parts = name.split(separator: "_").map { $0.lowercased() }
        guard let first = parts.first else { return name }
        return first + parts.dropFirst().map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined()
    }

    /// The Swift prefix of a package's top-level types: `bench.v1` → `Bench_V1_`.
    static func packagePrefix(_ package: String) -> String {
        guard !package.isEmpty else { return "" }
        return package.split(separator: ".").map { upperCamel(String($0)) }.joined(separator: "_") + "_"
    }

    /// A property name for a field or oneof.
    static func propertyName(_ protoName: String) -> String {
        let name = lowerCamel(protoName)
        if reservedMembers.contains(name) { return name + "_" }
        return name
    }

    /// Escapes a name if it is a keyword, for use at a declaration or a reference.
    static func escaped(_ name: String) -> String {
        keywords.contains(name) ? "`\(name)`" : name
    }

    /// A nested type name.
    static func typeName(_ protoName: String) -> String {
        reservedTypeNames.contains(protoName) ? protoName + "_" : protoName
    }

    /// Enum case names with the enum's name stripped from the front: `EVENT_STATUS_PENDING` in `EventStatus` → `pending`.
    static func enumCaseNames(enumName: String, values: [String]) -> [String] {
        let prefix = enumName.uppercased().filter { $0 != "_" }
        var used: Set<String> = ["unrecognized"]
        return values.map { value in
            var name = lowerCamelFromUpperSnake(stripPrefix(prefix, from: value))
            if name.isEmpty || name.first?.isNumber == true { name = lowerCamelFromUpperSnake(value) }
            while used.contains(name) { name += "_" }
            used.insert(name)
            return name
        }
    }

    private static func stripPrefix(_ prefix: String, from value: String) -> String {
        var matched = prefix.startIndex
        var index = value.startIndex
        while matched < prefix.endIndex, index < value.endIndex {
            let c = value[index]
            if c == "_" {
                index = value.index(after: index)
                continue
            }
            guard c.uppercased() == String(prefix[matched]) else { return value }
            matched = prefix.index(after: matched)
            index = value.index(after: index)
        }
        guard matched == prefix.endIndex, index < value.endIndex, value[index] == "_" else { return value }
        let rest = value[value.index(after: index)...]
        return rest.isEmpty ? value : String(rest)
    }

    /// A `///` doc comment from a .proto comment.
    static func docComment(_ comment: String?) -> [String] {
        guard let comment, !comment.isEmpty else { return [] }
        return comment.split(separator: "\n", omittingEmptySubsequences: false).map { line in
            var text = Substring(line)
            while text.last == " " || text.last == "\t" { text.removeLast() }
            return text.isEmpty ? "///" : "/// \(text)"
        }
    }
}

/// Accumulates indented lines of Swift; emitters write through it.
public struct CodeWriter {
    public private(set) var lines: [String] = []
    private var indentation = 0

    public init() {}

    /// Appends one line at the current indentation (an empty line has no indentation).
    public mutating func line(_ text: String = "") {
        lines.append(text.isEmpty ? "" : String(repeating: "    ", count: indentation) + text)
    }

    /// Appends several lines.
    public mutating func lines(_ texts: [String]) {
        for text in texts { line(text) }
    }

    /// Writes `header {`, the body indented, then `}`.
    public mutating func block(_ header: String, _ body: (inout CodeWriter) -> Void) {
        line(header + " {")
        indentation += 1
        body(&self)
        indentation -= 1
        line("}")
    }

    /// Writes `switch subject {`, the cases at the switch's own indentation, then `}`.
    public mutating func switchBlock(_ subject: String, _ body: (inout CodeWriter) -> Void) {
        line("switch \(subject) {")
        body(&self)
        line("}")
    }

    /// Writes `label:` and the body indented below it (a multi-statement `case`).
    public mutating func caseBlock(_ label: String, _ body: (inout CodeWriter) -> Void) {
        line(label + ":")
        indentation += 1
        body(&self)
        indentation -= 1
    }

    /// Continues the block just closed: turns its `}` into `} header {` (for `catch`, `else`).
    public mutating func continueBlock(_ header: String, _ body: (inout CodeWriter) -> Void) {
        if let last = lines.popLast() {
            lines.append(last + " " + header + " {")
        }
        indentation += 1
        body(&self)
        indentation -= 1
        line("}")
    }

    /// The accumulated source, ending with a newline.
    public var text: String { lines.joined(separator: "\n") + "\n" }
}
