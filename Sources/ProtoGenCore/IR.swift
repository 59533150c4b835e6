// The resolved model of a set of .proto files: every type reference is a fully-qualified name, every rule checked.
// Emitters work from this, never from the syntax tree.

/// A resolved field type.
public indirect enum FieldTypeIR: Hashable, Sendable {
    case scalar(ScalarType)
    /// An enum, by fully-qualified name without the leading dot (`bench.v1.EventStatus`).
    case enumeration(String)
    /// A message, by fully-qualified name.
    case message(String)
    case map(key: ScalarType, value: FieldTypeIR)
}

/// How many values a field holds and whether it tracks presence.
public enum FieldLabel: Hashable, Sendable {
    /// A proto3 singular field: no presence for scalars (default omitted), presence for messages.
    case singular
    /// A proto3 `optional` field: explicit presence.
    case optional
    case repeated
}

public struct FieldIR: Hashable, Sendable {
    public var name: String
    public var number: Int
    public var label: FieldLabel
    public var type: FieldTypeIR
    /// The index in the message's ``MessageIR/oneofs`` for members of a real (non-synthetic) oneof.
    public var oneofIndex: Int?
    /// Repeated scalars are packed unless `[packed = false]`.
    public var isPacked: Bool
    public var jsonName: String
    public var isDeprecated: Bool
    public var comment: String?
}

public struct OneofIR: Hashable, Sendable {
    public var name: String
    public var comment: String?
}

public struct MessageIR: Hashable, Sendable {
    public var name: String
    public var fullName: String
    /// In declaration order.
    public var fields: [FieldIR]
    public var oneofs: [OneofIR]
    public var messages: [MessageIR]
    public var enums: [EnumIR]
    /// Inclusive ranges.
    public var reservedRanges: [ClosedRange<Int>]
    public var reservedNames: [String]
    public var comment: String?
}

public struct EnumValueIR: Hashable, Sendable {
    public var name: String
    public var number: Int32
    public var comment: String?
}

public struct EnumIR: Hashable, Sendable {
    public var name: String
    public var fullName: String
    public var values: [EnumValueIR]
    public var allowAlias: Bool
    public var reservedRanges: [ClosedRange<Int>]
    public var reservedNames: [String]
    public var comment: String?
}

public struct MethodIR: Hashable, Sendable {
    public var name: String
    public var inputType: String
    public var outputType: String
    public var clientStreaming: Bool
    public var serverStreaming: Bool
    public var comment: String?
}

public struct ServiceIR: Hashable, Sendable {
    public var name: String
    public var fullName: String
    public var methods: [MethodIR]
    public var comment: String?
}

public struct FileIR: Hashable, Sendable {
    public var path: String
    public var package: String
    public var dependencies: [String]
    public var publicDependencies: [String]
    public var messages: [MessageIR]
    public var enums: [EnumIR]
    public var services: [ServiceIR]
}

extension MessageIR {
    /// This message and every message nested in it, depth first.
    public var allMessages: [MessageIR] { [self] + messages.flatMap(\.allMessages) }
}

extension FileIR {
    /// Every message in the file, nested ones included.
    public var allMessages: [MessageIR] { messages.flatMap(\.allMessages) }
    /// Every enum in the file, nested ones included.
    public var allEnums: [EnumIR] { enums + allMessages.flatMap(\.enums) }
}
