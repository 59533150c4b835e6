/// One part of a generated Swift file.
///
/// The generator runs its emitters in order over each file; each writes its own declarations. A new kind of output
/// (RPC server protocols and client stubs, for instance) is one more emitter.
public protocol SwiftEmitter: Sendable {
    /// Writes this emitter's declarations for `file`.
    func emit(_ file: FileIR, context: GenerationContext, into writer: inout CodeWriter)
}

/// Message structs and enums, nested as in the .proto.
public struct TypeDeclarationEmitter: SwiftEmitter {
    public init() {}

    public func emit(_ file: FileIR, context: GenerationContext, into writer: inout CodeWriter) {
        for enumeration in file.enums {
            writer.line()
            emitEnum(enumeration, context: context, into: &writer)
        }
        for message in file.messages {
            writer.line()
            emitMessage(message, context: context, into: &writer)
        }
    }

    func emitEnum(_ enumeration: EnumIR, context: GenerationContext, into writer: inout CodeWriter) {
        let access = context.access
        let name =
            context.swiftName(enumeration.fullName).split(separator: ".").last.map(String.init) ?? enumeration.name
        let caseNames = SwiftNaming.enumCaseNames(enumName: enumeration.name, values: enumeration.values.map(\.name))
        var primary: [(EnumValueIR, String)] = []
        var aliases: [(String, String)] = []
        var seen: [Int32: String] = [:]
        for (value, caseName) in zip(enumeration.values, caseNames) {
            if let target = seen[value.number] {
                aliases.append((caseName, target))
            } else {
                seen[value.number] = caseName
                primary.append((value, caseName))
            }
        }
        writer.lines(SwiftNaming.docComment(enumeration.comment))
        writer.block("\(access)enum \(name): ProtoEnum, CaseIterable") { w in
            for (value, caseName) in primary {
                w.lines(SwiftNaming.docComment(value.comment))
                w.line("case \(SwiftNaming.escaped(caseName))  // \(value.name) = \(value.number)")
            }
            w.line("/// A value this version of the schema does not name, kept so that it survives re-encoding.")
            w.line("case unrecognized(Int32)")
            w.line()
            w.line("/// The proto3 default, `\(primary.first?.0.name ?? "")`.")
            w.line("\(access)init() { self = .\(SwiftNaming.escaped(primary.first?.1 ?? "unrecognized(0)")) }")
            w.line()
            w.block("\(access)init(rawValue: Int32)") { w in
                w.switchBlock("rawValue") { w in
                    for (value, caseName) in primary {
                        w.line("case \(value.number): self = .\(SwiftNaming.escaped(caseName))")
                    }
                    w.line("default: self = .unrecognized(rawValue)")
                }
            }
            w.line()
            w.block("\(access)var rawValue: Int32") { w in
                w.switchBlock("self") { w in
                    for (value, caseName) in primary {
                        w.line("case .\(SwiftNaming.escaped(caseName)): \(value.number)")
                    }
                    w.line("case .unrecognized(let value): value")
                }
            }
            w.line()
            w.line("/// Every value the schema names.")
            w.line(
                "\(access)static let allCases: [Self] = [\(primary.map { ".\(SwiftNaming.escaped($0.1))" }.joined(separator: ", "))]"
            )
            for (alias, target) in aliases {
                w.line()
                w.line("/// An alias of `.\(target)`.")
                w.line("\(access)static let \(SwiftNaming.escaped(alias)): Self = .\(SwiftNaming.escaped(target))")
            }
        }
    }

    func emitMessage(_ message: MessageIR, context: GenerationContext, into writer: inout CodeWriter) {
        let access = context.access
        let name = context.swiftName(message.fullName).split(separator: ".").last.map(String.init) ?? message.name
        let fields = message.fields.map { SwiftField($0, owner: message, context: context) }
        writer.lines(SwiftNaming.docComment(message.comment))
        writer.block("\(access)struct \(name): Sendable, Hashable") { w in
            // Stored properties, in declaration order; oneof members become one enum-typed property.
            var emittedOneofs: Set<Int> = []
            for field in fields {
                if let index = field.ir.oneofIndex {
                    guard emittedOneofs.insert(index).inserted else { continue }
                    let oneof = message.oneofs[index]
                    w.lines(SwiftNaming.docComment(oneof.comment))
                    w.line("\(access)var \(Self.oneofProperty(oneof)): \(Self.oneofType(oneof))? = nil")
                    continue
                }
                w.lines(SwiftNaming.docComment(field.ir.comment))
                if field.ir.isDeprecated { w.line("/// - Note: deprecated in the schema.") }
                if field.isBoxed {
                    w.block("\(access)var \(field.property): \(field.declaredType)") { w in
                        w.line("get { _\(field.label)?.value }")
                        w.line("set { _\(field.label) = newValue.map { ProtoBox($0) } }")
                    }
                } else {
                    w.line("\(access)var \(field.property): \(field.declaredType) = \(field.defaultValue)")
                }
            }
            for field in fields where field.isBoxed {
                w.line("private var _\(field.label): ProtoBox<\(field.valueType(field.ir.type))>? = nil")
            }
            w.line("\(access)var unknownFields = UnknownFields()")

            // Oneof enums and accessors.
            for (index, oneof) in message.oneofs.enumerated() {
                let members = fields.filter { $0.ir.oneofIndex == index }
                let indirect = members.contains { member in
                    if case .message(let target) = member.ir.type {
                        return context.needsBox(owner: message.fullName, target: target)
                    }
                    return false
                }
                w.line()
                w.line("/// The fields of oneof `\(oneof.name)`, at most one of which is set.")
                w.block("\(access)\(indirect ? "indirect " : "")enum \(Self.oneofType(oneof)): Sendable, Hashable") {
                    w in
                    for member in members {
                        w.lines(SwiftNaming.docComment(member.ir.comment))
                        w.line("case \(member.property)(\(member.valueType(member.ir.type)))")
                    }
                }
                for member in members {
                    let empty = member.isMessage ? ".init()" : member.scalarDefault
                    w.line()
                    w.line(
                        "/// `\(member.ir.name)` if it is the member of `\(oneof.name)` that is set, else its default.")
                    w.block("\(access)var \(member.property): \(member.valueType(member.ir.type))") { w in
                        w.block("get") { w in
                            w.line(
                                "if case .\(member.property)(let value)? = \(Self.oneofProperty(oneof)) { return value }"
                            )
                            w.line("return \(empty)")
                        }
                        w.line("set { \(Self.oneofProperty(oneof)) = .\(member.property)(newValue) }")
                    }
                }
            }

            // Initialisers.
            w.line()
            w.line("\(access)init() {}")
            var parameters: [(label: String, type: String, value: String, property: String)] = []
            var seenOneofs: Set<Int> = []
            for field in fields {
                if let index = field.ir.oneofIndex {
                    guard seenOneofs.insert(index).inserted else { continue }
                    let oneof = message.oneofs[index]
                    let property = Self.oneofProperty(oneof)
                    parameters.append((property, Self.oneofType(oneof) + "?", "nil", property))
                } else {
                    parameters.append((field.label, field.declaredType, field.defaultValue, field.property))
                }
            }
            if !parameters.isEmpty {
                w.line()
                w.line("/// A message with the given field values; the others keep their defaults.")
                w.line("\(access)init(")
                for (i, p) in parameters.enumerated() {
                    w.line("    \(p.label): \(p.type) = \(p.value)\(i == parameters.count - 1 ? "" : ",")")
                }
                w.block(")") { w in
                    for p in parameters { w.line("self.\(p.property) = \(SwiftNaming.escaped(p.label))") }
                }
            }

            for nested in message.enums {
                w.line()
                emitEnum(nested, context: context, into: &w)
            }
            for nested in message.messages {
                w.line()
                emitMessage(nested, context: context, into: &w)
            }
        }
    }

    static func oneofProperty(_ oneof: OneofIR) -> String { SwiftNaming.escaped(SwiftNaming.propertyName(oneof.name)) }
    static func oneofType(_ oneof: OneofIR) -> String { "OneOf_" + SwiftNaming.upperCamel(oneof.name) }
}
