/// A field as generated Swift sees it: its property, Swift type, codec, tags and default check.
struct SwiftField {
    let ir: FieldIR
    /// The property name, escaped for use after `self.` or in a declaration.
    let property: String
    /// The unescaped property name, for argument labels.
    let label: String
    let isBoxed: Bool
    private let context: GenerationContext

    init(_ field: FieldIR, owner: MessageIR, context: GenerationContext) {
        self.ir = field
        self.context = context
        self.label = SwiftNaming.propertyName(field.name)
        self.property = SwiftNaming.escaped(label)
        if field.label != .repeated, field.oneofIndex == nil, case .message(let target) = field.type {
            isBoxed = context.needsBox(owner: owner.fullName, target: target)
        } else {
            isBoxed = false
        }
    }

    static func scalarSwiftType(_ scalar: ScalarType) -> String {
        switch scalar {
        case .double: "Double"
        case .float: "Float"
        case .int64, .sint64, .sfixed64: "Int64"
        case .uint64, .fixed64: "UInt64"
        case .int32, .sint32, .sfixed32: "Int32"
        case .uint32, .fixed32: "UInt32"
        case .bool: "Bool"
        case .string: "String"
        case .bytes: "[UInt8]"
        }
    }

    static func scalarCodec(_ scalar: ScalarType) -> String {
        switch scalar {
        case .double: "WireDouble"
        case .float: "WireFloat"
        case .int64: "WireInt64"
        case .uint64: "WireUInt64"
        case .int32: "WireInt32"
        case .fixed64: "WireFixed64"
        case .fixed32: "WireFixed32"
        case .bool: "WireBool"
        case .string: "WireString"
        case .bytes: "WireBytes"
        case .uint32: "WireUInt32"
        case .sfixed32: "WireSFixed32"
        case .sfixed64: "WireSFixed64"
        case .sint32: "WireSInt32"
        case .sint64: "WireSInt64"
        }
    }

    static func scalarWireType(_ scalar: ScalarType) -> UInt32 {
        switch scalar {
        case .double, .fixed64, .sfixed64: 1
        case .float, .fixed32, .sfixed32: 5
        case .string, .bytes: 2
        default: 0
        }
    }

    /// The Swift type of one value (the element type of a repeated field).
    func valueType(_ type: FieldTypeIR) -> String {
        switch type {
        case .scalar(let scalar): Self.scalarSwiftType(scalar)
        case .enumeration(let name), .message(let name): context.swiftName(name)
        case .map(let key, let value): "ProtoMap<\(Self.scalarSwiftType(key)), \(valueType(value))>"
        }
    }

    func codec(_ type: FieldTypeIR) -> String {
        switch type {
        case .scalar(let scalar): Self.scalarCodec(scalar)
        case .enumeration(let name): "WireEnum<\(context.swiftName(name))>"
        case .message(let name): "WireMessage<\(context.swiftName(name))>"
        case .map: "Never"
        }
    }

    func wireType(_ type: FieldTypeIR) -> UInt32 {
        switch type {
        case .scalar(let scalar): Self.scalarWireType(scalar)
        case .enumeration: 0
        case .message, .map: 2
        }
    }

    var codec: String { codec(ir.type) }

    var isMessage: Bool {
        if case .message = ir.type { return true }
        return false
    }

    /// The declared Swift type of the property.
    var declaredType: String {
        switch ir.label {
        case .repeated:
            if case .map = ir.type { return valueType(ir.type) }
            return "[\(valueType(ir.type))]"
        case .optional: return valueType(ir.type) + "?"
        case .singular: return isMessage ? valueType(ir.type) + "?" : valueType(ir.type)
        }
    }

    /// The default value of the property.
    var defaultValue: String {
        switch ir.label {
        case .repeated:
            if case .map = ir.type { return "[:]" }
            return "[]"
        case .optional: return "nil"
        case .singular: return isMessage ? "nil" : scalarDefault
        }
    }

    /// The proto3 default of one value of a scalar or enum.
    var scalarDefault: String {
        switch ir.type {
        case .scalar(.bool): "false"
        case .scalar(.string): "\"\""
        case .scalar(.bytes): "[]"
        case .scalar: "0"
        case .enumeration: ".init()"
        case .message: "nil"
        case .map: "[:]"
        }
    }

    /// The condition under which a singular (no-presence) scalar differs from its default and is encoded.
    func isNonDefault(_ value: String) -> String {
        switch ir.type {
        case .scalar(.bool): value
        case .scalar(.string), .scalar(.bytes): "!\(value).isEmpty"
        // -0.0 is not the default: compare bits, as the reference implementations do.
        case .scalar(.float), .scalar(.double): "\(value).bitPattern != 0"
        case .scalar: "\(value) != 0"
        case .enumeration: "\(value).rawValue != 0"
        case .message, .map: "true"
        }
    }

    /// The tag for this field with the value's own wire type.
    var tag: UInt32 { UInt32(ir.number) << 3 | wireType(ir.type) }
    /// The tag for the packed (length-delimited) form.
    var packedTag: UInt32 { UInt32(ir.number) << 3 | 2 }

    static func tagBytes(_ tag: UInt32) -> [UInt8] {
        var bytes: [UInt8] = []
        var v = tag
        while v >= 0x80 {
            bytes.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
        return bytes
    }

    /// A statement that writes `tag` with the fewest operations.
    static func writeTag(_ tag: UInt32) -> String {
        let bytes = tagBytes(tag)
        switch bytes.count {
        case 1: return "writer.writeByte(\(bytes[0]))"
        case 2: return "writer.writeBytes(\(bytes[0]), \(bytes[1]))"
        default: return "writer.writeVarint(UInt32(\(tag)))"
        }
    }

    var tagSize: Int { Self.tagBytes(tag).count }
}
