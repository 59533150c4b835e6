/// Parses the tokens of one `.proto` file into a ``FileAST``.
///
/// The grammar is proto3's, as the protobuf language specification gives it. proto2 and editions files are
/// refused with a clear diagnostic; proto2-only constructs in a proto3 file (`required`, groups, `extensions`,
/// default values) are errors with the reason.
struct Parser {
    private var tokens: [Token]
    private var index = 0
    private let path: String

    init(source: String, path: String) throws(ProtoGenError) {
        var tokenizer = Tokenizer(source: source, file: path)
        self.tokens = try tokenizer.tokenize()
        self.path = path
    }

    // MARK: - Token helpers

    private var current: Token { tokens[index] }

    private mutating func next() -> Token {
        let token = tokens[index]
        if index < tokens.count - 1 { index += 1 }
        return token
    }

    private func fail(_ message: String, at location: SourceLocation? = nil) -> ProtoGenError {
        ProtoGenError([Diagnostic(message, at: location ?? current.location)])
    }

    private func describe(_ token: Token) -> String {
        switch token.kind {
        case .end: "end of file"
        case .string: "string \"\(token.text)\""
        default: "'\(token.text)'"
        }
    }

    private func isSymbol(_ s: String) -> Bool { current.kind == .symbol && current.text == s }
    private func isKeyword(_ s: String) -> Bool { current.kind == .identifier && current.text == s }

    private mutating func expect(_ symbol: String) throws(ProtoGenError) {
        guard isSymbol(symbol) else { throw fail("expected '\(symbol)', found \(describe(current))") }
        _ = next()
    }

    private mutating func consume(_ symbol: String) -> Bool {
        if isSymbol(symbol) {
            _ = next()
            return true
        }
        return false
    }

    private mutating func identifier(_ what: String) throws(ProtoGenError) -> Token {
        guard current.kind == .identifier else { throw fail("expected \(what), found \(describe(current))") }
        return next()
    }

    /// A dotted name such as `foo.bar.Baz` or `.foo.Bar`.
    private mutating func fullIdentifier(_ what: String) throws(ProtoGenError) -> (String, SourceLocation) {
        let location = current.location
        var name = ""
        if consume(".") { name = "." }
        name += try identifier(what).text
        while isSymbol(".") {
            _ = next()
            name += "." + (try identifier(what).text)
        }
        return (name, location)
    }

    private mutating func stringLiteral(_ what: String) throws(ProtoGenError) -> String {
        guard current.kind == .string else { throw fail("expected \(what), found \(describe(current))") }
        var value = next().text
        while current.kind == .string { value += next().text }  // adjacent literals concatenate
        return value
    }

    private mutating func integer(_ what: String) throws(ProtoGenError) -> Int {
        let negative = consume("-")
        guard current.kind == .integer else { throw fail("expected \(what), found \(describe(current))") }
        let token = next()
        guard let value = Self.parseInteger(token.text) else {
            throw fail("integer '\(token.text)' is out of range", at: token.location)
        }
        return negative ? -value : value
    }

    static func parseInteger(_ text: String) -> Int? {
        if text.hasPrefix("0x") || text.hasPrefix("0X") { return Int(text.dropFirst(2), radix: 16) }
        if text.count > 1, text.hasPrefix("0") { return Int(text.dropFirst(), radix: 8) }
        return Int(text)
    }

    // MARK: - File

    mutating func parseFile() throws(ProtoGenError) -> FileAST {
        var file = FileAST(path: path)
        try parseSyntax()
        while current.kind != .end {
            if consume(";") { continue }
            let keyword = try identifier("a declaration")
            switch keyword.text {
            case "syntax": throw fail("'syntax' must be the first statement of the file", at: keyword.location)
            case "package":
                guard file.package == nil else { throw fail("multiple package declarations", at: keyword.location) }
                file.package = try fullIdentifier("a package name").0
                try expect(";")
            case "import":
                var kind = ImportAST.Kind.normal
                if isKeyword("public") {
                    _ = next()
                    kind = .isPublic
                } else if isKeyword("weak") {
                    _ = next()
                    kind = .weak
                }
                let location = current.location
                let importPath = try stringLiteral("an import path")
                file.imports.append(ImportAST(path: importPath, kind: kind, location: location))
                try expect(";")
            case "option": file.options.append(try parseOptionStatement())
            case "message": file.messages.append(try parseMessage(keyword))
            case "enum": file.enums.append(try parseEnum(keyword))
            case "service": file.services.append(try parseService(keyword))
            case "extend":
                throw fail(
                    "'extend' is not supported: Shoal's generator handles proto3 without extensions",
                    at: keyword.location)
            default: throw fail("expected a declaration, found '\(keyword.text)'", at: keyword.location)
            }
        }
        return file
    }

    private mutating func parseSyntax() throws(ProtoGenError) {
        guard isKeyword("syntax") || isKeyword("edition") else {
            throw fail("no syntax declared, which means proto2: proto2 is not supported; add 'syntax = \"proto3\";'")
        }
        let keyword = next()
        try expect("=")
        let location = current.location
        let value = try stringLiteral("a syntax name")
        if keyword.text == "edition" {
            throw fail("editions are not supported; Shoal's generator handles proto3 only", at: location)
        }
        switch value {
        case "proto3": break
        case "proto2": throw fail("proto2 is not supported; Shoal's generator handles proto3 only", at: location)
        default: throw fail("unknown syntax \"\(value)\"; expected \"proto3\"", at: location)
        }
        try expect(";")
    }

    // MARK: - Options

    /// `option name = value;` after the `option` keyword.
    private mutating func parseOptionStatement() throws(ProtoGenError) -> OptionAST {
        let option = try parseOption()
        try expect(";")
        return option
    }

    /// `name = value` where name may be `(ext.name).field`.
    private mutating func parseOption() throws(ProtoGenError) -> OptionAST {
        let location = current.location
        var name = ""
        repeat {
            if consume("(") {
                name += "(" + (try fullIdentifier("an option name").0) + ")"
                try expect(")")
            } else {
                name += try identifier("an option name").text
            }
            guard consume(".") else { break }
            name += "."
        } while true
        try expect("=")
        return OptionAST(name: name, value: try parseConstant(), location: location)
    }

    /// A constant: identifier, signed number, string, or a text-format aggregate in braces (kept as raw text).
    private mutating func parseConstant() throws(ProtoGenError) -> String {
        if isSymbol("{") {
            var depth = 0
            var text = ""
            repeat {
                let token = next()
                if token.kind == .end { throw fail("unterminated option aggregate") }
                if token.kind == .symbol && token.text == "{" { depth += 1 }
                if token.kind == .symbol && token.text == "}" { depth -= 1 }
                text += token.text + " "
            } while depth > 0
            return text
        }
        var sign = ""
        if isSymbol("-") || isSymbol("+") { sign = next().text == "-" ? "-" : "" }
        switch current.kind {
        case .identifier, .integer, .float: return sign + next().text
        case .string: return try stringLiteral("a constant")
        default: throw fail("expected a constant, found \(describe(current))")
        }
    }

    /// `[a = 1, b = 2]` after a field, if present.
    private mutating func parseFieldOptions() throws(ProtoGenError) -> [OptionAST] {
        guard consume("[") else { return [] }
        var options: [OptionAST] = []
        repeat { options.append(try parseOption()) } while consume(",")
        try expect("]")
        return options
    }

    // MARK: - Messages

    private mutating func parseMessage(_ keyword: Token) throws(ProtoGenError) -> MessageAST {
        let name = try identifier("a message name")
        var message = MessageAST(name: name.text, location: name.location, comment: keyword.leadingComment)
        try expect("{")
        while !consume("}") {
            if current.kind == .end { throw fail("expected '}' to close message '\(name.text)'") }
            if consume(";") { continue }
            let start = current
            switch current.text {
            case "message" where current.kind == .identifier:
                message.messages.append(try parseMessage(next()))
            case "enum" where current.kind == .identifier:
                message.enums.append(try parseEnum(next()))
            case "option" where current.kind == .identifier:
                _ = next()
                message.options.append(try parseOptionStatement())
            case "reserved" where current.kind == .identifier:
                _ = next()
                try parseReserved(into: &message.reserved, max: 536_870_911)
            case "oneof" where current.kind == .identifier:
                _ = next()
                try parseOneof(into: &message, comment: start.leadingComment)
            case "extensions" where current.kind == .identifier:
                throw fail("extension ranges are not allowed in proto3")
            case "extend" where current.kind == .identifier:
                throw fail("'extend' is not supported: Shoal's generator handles proto3 without extensions")
            default:
                message.fields.append(try parseField(oneofIndex: nil))
            }
        }
        return message
    }

    private mutating func parseOneof(into message: inout MessageAST, comment: String?) throws(ProtoGenError) {
        let name = try identifier("a oneof name")
        let oneofIndex = message.oneofs.count
        message.oneofs.append(OneofAST(name: name.text, location: name.location, comment: comment))
        try expect("{")
        while !consume("}") {
            if current.kind == .end { throw fail("expected '}' to close oneof '\(name.text)'") }
            if consume(";") { continue }
            if isKeyword("option") {
                _ = next()
                _ = try parseOptionStatement()
                continue
            }
            if isKeyword("repeated") || isKeyword("optional") || isKeyword("required") {
                throw fail("fields in oneofs must not have labels (\(current.text))")
            }
            if isKeyword("map") && tokens[index + 1].text == "<" {
                throw fail("map fields are not allowed in oneofs")
            }
            message.fields.append(try parseField(oneofIndex: oneofIndex))
        }
    }

    private mutating func parseField(oneofIndex: Int?) throws(ProtoGenError) -> FieldAST {
        let first = current
        var label = LabelAST.none
        switch current.kind == .identifier ? current.text : "" {
        case "repeated":
            _ = next()
            label = .repeated
        case "optional":
            _ = next()
            label = .optional
        case "required": throw fail("required fields are not allowed in proto3")
        case "group": throw fail("groups are not allowed in proto3")
        default: break
        }
        let typeLocation = current.location
        let type: TypeRefAST
        if isKeyword("map") && tokens[index + 1].kind == .symbol && tokens[index + 1].text == "<" {
            guard label == .none else {
                throw fail("map fields cannot be '\(label == .repeated ? "repeated" : "optional")'", at: first.location)
            }
            _ = next()
            try expect("<")
            let keyToken = try identifier("a map key type")
            guard let key = ScalarType(rawValue: keyToken.text) else {
                throw fail(
                    "invalid map key type '\(keyToken.text)': keys must be integral or string types",
                    at: keyToken.location)
            }
            guard key.isValidMapKey else {
                throw fail(
                    "invalid map key type '\(key.rawValue)': keys must be integral or string types",
                    at: keyToken.location)
            }
            try expect(",")
            let value = try parseTypeName()
            try expect(">")
            type = .map(key: key, value: value)
        } else {
            type = try parseTypeName()
        }
        let name = try identifier("a field name")
        try expect("=")
        let number = try integer("a field number")
        let options = try parseFieldOptions()
        if let option = options.first(where: { $0.name == "default" }) {
            throw fail("explicit default values are not allowed in proto3", at: option.location)
        }
        try expect(";")
        return FieldAST(
            name: name.text, number: number, label: label, type: type, typeLocation: typeLocation,
            options: options, oneofIndex: oneofIndex, location: name.location, comment: first.leadingComment
        )
    }

    private mutating func parseTypeName() throws(ProtoGenError) -> TypeRefAST {
        let (name, _) = try fullIdentifier("a type name")
        if let scalar = ScalarType(rawValue: name) { return .scalar(scalar) }
        return .named(name)
    }

    private mutating func parseReserved(into reserved: inout ReservedAST, max: Int) throws(ProtoGenError) {
        if current.kind == .string {
            repeat {
                let location = current.location
                reserved.names.append((try stringLiteral("a reserved name"), location))
            } while consume(",")
        } else {
            repeat {
                let location = current.location
                let low = try integer("a reserved field number")
                var high = low
                if isKeyword("to") {
                    _ = next()
                    if isKeyword("max") {
                        _ = next()
                        high = max
                    } else {
                        high = try integer("a range end")
                    }
                }
                guard low <= high else { throw fail("reserved range \(low) to \(high) is empty", at: location) }
                reserved.ranges.append((low...high, location))
            } while consume(",")
        }
        try expect(";")
    }

    // MARK: - Enums

    private mutating func parseEnum(_ keyword: Token) throws(ProtoGenError) -> EnumAST {
        let name = try identifier("an enum name")
        var result = EnumAST(name: name.text, location: name.location, comment: keyword.leadingComment)
        try expect("{")
        while !consume("}") {
            if current.kind == .end { throw fail("expected '}' to close enum '\(name.text)'") }
            if consume(";") { continue }
            if isKeyword("option") {
                _ = next()
                result.options.append(try parseOptionStatement())
            } else if isKeyword("reserved") {
                _ = next()
                try parseReserved(into: &result.reserved, max: Int(Int32.max))
            } else {
                let valueName = try identifier("an enum value name")
                try expect("=")
                let number = try integer("an enum value number")
                guard number >= Int(Int32.min) && number <= Int(Int32.max) else {
                    throw fail("enum value \(number) is outside the int32 range", at: valueName.location)
                }
                _ = try parseFieldOptions()
                try expect(";")
                result.values.append(
                    EnumValueAST(
                        name: valueName.text, number: number, location: valueName.location,
                        comment: valueName.leadingComment))
            }
        }
        return result
    }

    // MARK: - Services

    private mutating func parseService(_ keyword: Token) throws(ProtoGenError) -> ServiceAST {
        let name = try identifier("a service name")
        var service = ServiceAST(name: name.text, location: name.location, comment: keyword.leadingComment)
        try expect("{")
        while !consume("}") {
            if current.kind == .end { throw fail("expected '}' to close service '\(name.text)'") }
            if consume(";") { continue }
            let start = try identifier("'rpc' or 'option'")
            switch start.text {
            case "option": _ = try parseOptionStatement()
            case "rpc":
                let methodName = try identifier("a method name")
                try expect("(")
                let clientStreaming =
                    isKeyword("stream") && tokens[index + 1].kind == .identifier
                    ? {
                        _ = next()
                        return true
                    }() : false
                let (input, inputLocation) = try fullIdentifier("a request type")
                try expect(")")
                guard isKeyword("returns") else { throw fail("expected 'returns', found \(describe(current))") }
                _ = next()
                try expect("(")
                let serverStreaming =
                    isKeyword("stream") && tokens[index + 1].kind == .identifier
                    ? {
                        _ = next()
                        return true
                    }() : false
                let (output, outputLocation) = try fullIdentifier("a response type")
                try expect(")")
                if consume("{") {
                    while !consume("}") {
                        if current.kind == .end { throw fail("expected '}' to close method '\(methodName.text)'") }
                        if consume(";") { continue }
                        guard isKeyword("option") else { throw fail("expected 'option', found \(describe(current))") }
                        _ = next()
                        _ = try parseOptionStatement()
                    }
                } else {
                    try expect(";")
                }
                service.methods.append(
                    MethodAST(
                        name: methodName.text, inputType: input, inputLocation: inputLocation,
                        clientStreaming: clientStreaming,
                        outputType: output, outputLocation: outputLocation, serverStreaming: serverStreaming,
                        location: methodName.location, comment: start.leadingComment
                    ))
            default: throw fail("expected 'rpc' or 'option', found '\(start.text)'", at: start.location)
            }
        }
        return service
    }
}
