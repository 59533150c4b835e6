/// The `ProtoMessage` conformance of every message: decode, size and encode, below a MARK.
public struct MessageCodecEmitter: SwiftEmitter {
    public init() {}

    public func emit(_ file: FileIR, context: GenerationContext, into writer: inout CodeWriter) {
        for message in file.allMessages {
            writer.line()
            emit(message, context: context, into: &writer)
        }
    }

    private func emit(_ message: MessageIR, context: GenerationContext, into writer: inout CodeWriter) {
        let access = context.access
        let fields = message.fields.map { SwiftField($0, owner: message, context: context) }
        let byNumber = fields.sorted { $0.ir.number < $1.ir.number }
        writer.line("// MARK: - \(message.fullName) wire format")
        writer.line()
        writer.block("extension \(context.swiftName(message.fullName)): ProtoMessage") { w in
            w.line("\(access)static var protoMessageName: String { \"\(message.fullName)\" }")
            w.line()
            emitDecode(message, fields, context: context, into: &w)
            w.line()
            emitFieldPath(message, fields, into: &w)
            w.line()
            w.block("\(access)func encodedSize() -> Int") { w in
                if byNumber.isEmpty {
                    w.line("unknownFields.encodedSize")
                } else {
                    w.line("var size = unknownFields.encodedSize")
                    for field in byNumber { emitSize(field, message, into: &w) }
                    w.line("return size")
                }
            }
            w.line()
            w.block("\(access)func encode(to writer: inout WireWriter)") { w in
                // Backwards: the unknown fields end the encoding, then fields in descending number order.
                w.line("unknownFields.encode(to: &writer)")
                for field in byNumber.reversed() { emitWrite(field, message, into: &w) }
            }
        }
    }

    private func emitDecode(
        _ message: MessageIR, _ fields: [SwiftField], context: GenerationContext, into w: inout CodeWriter
    ) {
        w.block(
            "\(context.access)mutating func decodeMessage(from reader: inout WireReader) throws(ProtoDecodingError)"
        ) { w in
            w.line("var tag: UInt32 = 0")
            w.block("do throws(ProtoDecodingError)") { w in
                w.block("while true") { w in
                    w.line("tag = 0")
                    w.line("guard let next = try reader.nextTag() else { break }")
                    w.line("tag = next")
                    w.switchBlock("next") { w in
                        for field in fields { emitDecodeCases(field, message, into: &w) }
                        w.line("default: try reader.skipField(tag: next, into: &unknownFields)")
                    }
                }
            }
            w.continueBlock("catch") { w in
                w.line("throw error.inField(_protoFieldPathComponent(tag >> 3))")
            }
        }
    }

    private func emitDecodeCases(_ field: SwiftField, _ message: MessageIR, into w: inout CodeWriter) {
        let target = "self.\(field.property)"
        if let index = field.ir.oneofIndex {
            let oneof = "self." + TypeDeclarationEmitter.oneofProperty(message.oneofs[index])
            if field.isMessage {
                w.caseBlock("case \(field.tag)") { w in
                    w.line("var value = \(field.valueType(field.ir.type))()")
                    w.line("if case .\(field.property)(let existing)? = \(oneof) { value = existing }")
                    w.line("try reader.readMessage(into: &value)")
                    w.line("\(oneof) = .\(field.property)(value)")
                }
            } else {
                w.line("case \(field.tag): \(oneof) = .\(field.property)(try \(field.codec).read(from: &reader))")
            }
            return
        }
        switch field.ir.label {
        case .repeated:
            if case .map(let key, let value) = field.ir.type {
                w.line(
                    "case \(field.tag): try reader.readMapEntry(\(SwiftField.scalarCodec(key)).self, \(field.codec(value)).self, into: &\(target))"
                )
            } else if field.isMessage {
                w.line("case \(field.tag): try reader.readMessage(appendingTo: &\(target))")
            } else if isPackable(field) {
                w.line("case \(field.packedTag): try reader.readPacked(\(field.codec).self, into: &\(target))")
                w.line("case \(field.tag): \(target).append(try \(field.codec).read(from: &reader))")
            } else {
                w.line("case \(field.tag): try reader.readElement(\(field.codec).self, appendingTo: &\(target))")
            }
        case .singular, .optional:
            if field.isBoxed {
                w.caseBlock("case \(field.tag)") { w in
                    w.line("var value = \(target)")
                    w.line("try reader.readMessage(into: &value)")
                    w.line("\(target) = value")
                }
            } else if field.isMessage {
                w.line("case \(field.tag): try reader.readMessage(into: &\(target))")
            } else {
                w.line("case \(field.tag): \(target) = try \(field.codec).read(from: &reader)")
            }
        }
    }

    private func isPackable(_ field: SwiftField) -> Bool {
        switch field.ir.type {
        case .scalar(let scalar): scalar.isPackable
        case .enumeration: true
        default: false
        }
    }

    /// The name of a field for error paths; repeated messages carry the index being decoded.
    private func emitFieldPath(_ message: MessageIR, _ fields: [SwiftField], into w: inout CodeWriter) {
        w.block("private func _protoFieldPathComponent(_ number: UInt32) -> String?") { w in
            w.switchBlock("number") { w in
                for field in fields {
                    if field.ir.label == .repeated, field.isMessage {
                        w.line("case \(field.ir.number): \"\(field.ir.name)[\\(self.\(field.property).count)]\"")
                    } else {
                        w.line("case \(field.ir.number): \"\(field.ir.name)\"")
                    }
                }
                w.line("default: nil")
            }
        }
    }

    private func emitSize(_ field: SwiftField, _ message: MessageIR, into w: inout CodeWriter) {
        let value = "self.\(field.property)"
        let tagSize = field.tagSize
        if let index = field.ir.oneofIndex {
            let oneof = "self." + TypeDeclarationEmitter.oneofProperty(message.oneofs[index])
            w.line(
                "if case .\(field.property)(let value)? = \(oneof) { size &+= \(tagSize) &+ \(field.codec).encodedSize(of: value) }"
            )
            return
        }
        switch field.ir.label {
        case .repeated:
            if case .map(let key, let valueType) = field.ir.type {
                w.line(
                    "size &+= WireFormat.mapFieldSize(\(SwiftField.scalarCodec(key)).self, \(field.codec(valueType)).self, \(value), tagSize: \(tagSize))"
                )
            } else if field.ir.isPacked {
                w.line("size &+= WireFormat.packedFieldSize(\(field.codec).self, \(value), tagSize: \(tagSize))")
            } else {
                w.line("size &+= WireFormat.repeatedFieldSize(\(field.codec).self, \(value), tagSize: \(tagSize))")
            }
        case .optional:
            w.line("if let value = \(value) { size &+= \(tagSize) &+ \(field.codec).encodedSize(of: value) }")
        case .singular:
            if field.isMessage {
                w.line("if let value = \(value) { size &+= \(tagSize) &+ \(field.codec).encodedSize(of: value) }")
            } else {
                w.line(
                    "if \(field.isNonDefault(value)) { size &+= \(tagSize) &+ \(field.codec).encodedSize(of: \(value)) }"
                )
            }
        }
    }

    private func emitWrite(_ field: SwiftField, _ message: MessageIR, into w: inout CodeWriter) {
        let value = "self.\(field.property)"
        let writeTag = SwiftField.writeTag(field.tag)
        if let index = field.ir.oneofIndex {
            let oneof = "self." + TypeDeclarationEmitter.oneofProperty(message.oneofs[index])
            w.block("if case .\(field.property)(let value)? = \(oneof)") { w in
                w.line("\(field.codec).write(value, to: &writer)")
                w.line(writeTag)
            }
            return
        }
        switch field.ir.label {
        case .repeated:
            if case .map(let key, let valueType) = field.ir.type {
                w.line(
                    "writer.writeMap(\(SwiftField.scalarCodec(key)).self, \(field.codec(valueType)).self, \(value), tag: \(field.tag))"
                )
            } else if field.ir.isPacked {
                w.line("writer.writePacked(\(field.codec).self, \(value), tag: \(field.packedTag))")
            } else {
                w.line("writer.writeRepeated(\(field.codec).self, \(value), tag: \(field.tag))")
            }
        case .optional:
            w.block("if let value = \(value)") { w in
                w.line("\(field.codec).write(value, to: &writer)")
                w.line(writeTag)
            }
        case .singular:
            if field.isMessage {
                w.block("if let value = \(value)") { w in
                    w.line("\(field.codec).write(value, to: &writer)")
                    w.line(writeTag)
                }
            } else {
                w.block("if \(field.isNonDefault(value))") { w in
                    w.line("\(field.codec).write(\(value), to: &writer)")
                    w.line(writeTag)
                }
            }
        }
    }
}

/// A namespace enum per `service` with its descriptor and one nested enum per method
/// (`Method.<Name>.Input`, `.Output`, `.descriptor`).
public struct ServiceDescriptorEmitter: SwiftEmitter {
    public init() {}

    public func emit(_ file: FileIR, context: GenerationContext, into writer: inout CodeWriter) {
        let access = context.access
        for service in file.services {
            writer.line()
            writer.lines(SwiftNaming.docComment(service.comment))
            writer.block("\(access)enum \(context.swiftServiceName(service, in: file))") { w in
                w.line("/// The service's name and methods.")
                let methodList = service.methods.map { "Method.\(SwiftNaming.escaped($0.name)).descriptor" }.joined(
                    separator: ", ")
                w.line(
                    "\(access)static let descriptor = ProtoServiceDescriptor(fullName: \"\(service.fullName)\", methods: [\(methodList)])"
                )
                w.line()
                w.line("/// One namespace per RPC method.")
                w.block("\(access)enum Method") { w in
                    for (i, method) in service.methods.enumerated() {
                        if i > 0 { w.line() }
                        w.lines(SwiftNaming.docComment(method.comment))
                        w.block("\(access)enum \(SwiftNaming.escaped(method.name))") { w in
                            w.line("\(access)typealias Input = \(context.swiftName(method.inputType))")
                            w.line("\(access)typealias Output = \(context.swiftName(method.outputType))")
                            let kind =
                                switch (method.clientStreaming, method.serverStreaming) {
                                case (false, false): "unary"
                                case (true, false): "clientStreaming"
                                case (false, true): "serverStreaming"
                                case (true, true): "bidirectionalStreaming"
                                }
                            w.line("\(access)static let descriptor = ProtoMethodDescriptor(")
                            w.line("    service: \"\(service.fullName)\", method: \"\(method.name)\", kind: .\(kind),")
                            w.line("    inputType: \"\(method.inputType)\", outputType: \"\(method.outputType)\"")
                            w.line(")")
                        }
                    }
                }
            }
        }
    }
}
