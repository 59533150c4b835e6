// The syntax tree the parser produces: what a .proto file says, before names are resolved.

/// The scalar types of proto3.
public enum ScalarType: String, Hashable, Sendable, CaseIterable {
    case double, float, int64, uint64, int32, fixed64, fixed32, bool, string, bytes, uint32, sfixed32, sfixed64, sint32,
        sint64

    /// Whether the type may be a `map` key (any integral or string type).
    var isValidMapKey: Bool {
        switch self {
        case .double, .float, .bytes: false
        default: true
        }
    }

    /// Whether repeated fields of this type are packed.
    var isPackable: Bool { self != .string && self != .bytes }
}

/// An `option name = value;` or `[name = value]`.
struct OptionAST: Hashable, Sendable {
    var name: String
    var value: String
    var location: SourceLocation
}

/// A field's type as written.
indirect enum TypeRefAST: Hashable, Sendable {
    case scalar(ScalarType)
    case named(String)
    case map(key: ScalarType, value: TypeRefAST)
}

enum LabelAST: Hashable, Sendable {
    case none, optional, repeated
}

struct FieldAST: Hashable, Sendable {
    var name: String
    var number: Int
    var label: LabelAST
    var type: TypeRefAST
    var typeLocation: SourceLocation
    var options: [OptionAST]
    var oneofIndex: Int?
    var location: SourceLocation
    var comment: String?
}

struct OneofAST: Hashable, Sendable {
    var name: String
    var location: SourceLocation
    var comment: String?
}

/// `reserved 2, 15, 9 to 11;` (inclusive ranges) or `reserved "foo";`.
struct ReservedAST: Hashable, Sendable {
    var ranges: [(ClosedRange<Int>, SourceLocation)] = []
    var names: [(String, SourceLocation)] = []

    static func == (lhs: ReservedAST, rhs: ReservedAST) -> Bool {
        lhs.ranges.map(\.0) == rhs.ranges.map(\.0) && lhs.names.map(\.0) == rhs.names.map(\.0)
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(ranges.map(\.0))
        hasher.combine(names.map(\.0))
    }
}

struct MessageAST: Hashable, Sendable {
    var name: String
    var location: SourceLocation
    var comment: String?
    var fields: [FieldAST] = []
    var oneofs: [OneofAST] = []
    var messages: [MessageAST] = []
    var enums: [EnumAST] = []
    var reserved = ReservedAST()
    var options: [OptionAST] = []
}

struct EnumValueAST: Hashable, Sendable {
    var name: String
    var number: Int
    var location: SourceLocation
    var comment: String?
}

struct EnumAST: Hashable, Sendable {
    var name: String
    var location: SourceLocation
    var comment: String?
    var values: [EnumValueAST] = []
    var reserved = ReservedAST()
    var options: [OptionAST] = []
}

struct MethodAST: Hashable, Sendable {
    var name: String
    var inputType: String
    var inputLocation: SourceLocation
    var clientStreaming: Bool
    var outputType: String
    var outputLocation: SourceLocation
    var serverStreaming: Bool
    var location: SourceLocation
    var comment: String?
}

struct ServiceAST: Hashable, Sendable {
    var name: String
    var location: SourceLocation
    var comment: String?
    var methods: [MethodAST] = []
}

struct ImportAST: Hashable, Sendable {
    enum Kind: Hashable, Sendable { case normal, isPublic, weak }
    var path: String
    var kind: Kind
    var location: SourceLocation
}

struct FileAST: Hashable, Sendable {
    var path: String
    var package: String?
    var imports: [ImportAST] = []
    var options: [OptionAST] = []
    var messages: [MessageAST] = []
    var enums: [EnumAST] = []
    var services: [ServiceAST] = []
}
