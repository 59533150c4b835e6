/// Loads a set of `.proto` files and their imports, resolves every name with protobuf's scoping rules and checks
/// proto3's rules, producing one ``FileIR`` per file.
///
/// Problems are collected, not thrown one at a time: a file with three mistakes reports all three.
public struct Resolver {
    private let provider: any ProtoSourceProvider
    private var asts: [String: FileAST] = [:]
    private var loadOrder: [String] = []
    private var symbols: [String: Symbol] = [:]
    private var diagnostics: [Diagnostic] = []

    struct Symbol {
        enum Kind { case package, message, enumeration, enumValue, service, field, oneof, method }
        var kind: Kind
        var file: String
        var location: SourceLocation

        var isType: Bool { kind == .message || kind == .enumeration }
        var isAggregate: Bool { kind == .message || kind == .package || kind == .enumeration || kind == .service }
    }

    public init(provider: any ProtoSourceProvider) {
        self.provider = provider
    }

    /// Parses and resolves `paths` and everything they import.
    ///
    /// - Returns: the resolved files, keyed by import path; includes imported files.
    /// - Throws: ``ProtoGenError`` with every problem found.
    public mutating func resolve(_ paths: [String]) throws(ProtoGenError) -> [String: FileIR] {
        for path in paths {
            try load(path, from: nil, stack: [])
        }
        for path in loadOrder {
            if let ast = asts[path] { register(ast) }
        }
        var result: [String: FileIR] = [:]
        for path in loadOrder {
            if let ast = asts[path] { result[path] = resolveFile(ast) }
        }
        if !diagnostics.isEmpty {
            throw ProtoGenError(diagnostics.sorted { $0.location < $1.location })
        }
        return result
    }

    // MARK: - Loading

    private mutating func load(_ path: String, from importer: ImportAST?, stack: [String]) throws(ProtoGenError) {
        if stack.contains(path) {
            let location = importer?.location ?? SourceLocation(file: path, line: 1, column: 1)
            throw ProtoGenError([
                Diagnostic("import cycle: \((stack + [path]).joined(separator: " -> "))", at: location)
            ])
        }
        if asts[path] != nil { return }
        guard let source = provider.source(for: path) else {
            if let importer {
                throw ProtoGenError([Diagnostic("import \"\(path)\" was not found", at: importer.location)])
            }
            throw ProtoGenError([Diagnostic("file not found", at: SourceLocation(file: path, line: 1, column: 1))])
        }
        var parser = try Parser(source: source, path: path)
        let ast = try parser.parseFile()
        asts[path] = ast
        for dependency in ast.imports {
            try load(dependency.path, from: dependency, stack: stack + [path])
        }
        loadOrder.append(path)
    }

    // MARK: - Symbols

    private mutating func define(_ name: String, _ kind: Symbol.Kind, file: String, at location: SourceLocation) {
        if let existing = symbols[name] {
            if existing.kind == .package && kind == .package { return }
            let simple = name.split(separator: ".").last.map(String.init) ?? name
            var message = "'\(simple)' is already defined"
            if existing.file != file || existing.location != location {
                message += " at \(existing.location.file):\(existing.location.line):\(existing.location.column)"
            }
            if kind == .enumValue || existing.kind == .enumValue {
                message += " (enum values are scoped like C++ enumerators: siblings of their enum, not children)"
            }
            diagnostics.append(Diagnostic(message, at: location))
            return
        }
        symbols[name] = Symbol(kind: kind, file: file, location: location)
    }

    private mutating func register(_ file: FileAST) {
        let package = file.package ?? ""
        if !package.isEmpty {
            var prefix = ""
            for part in package.split(separator: ".") {
                prefix = prefix.isEmpty ? String(part) : prefix + "." + part
                define(prefix, .package, file: file.path, at: SourceLocation(file: file.path, line: 1, column: 1))
            }
        }
        for message in file.messages { register(message, scope: package, file: file.path) }
        for enumeration in file.enums { register(enumeration, scope: package, file: file.path) }
        for service in file.services {
            let name = Self.qualify(package, service.name)
            define(name, .service, file: file.path, at: service.location)
            for method in service.methods {
                define(name + "." + method.name, .method, file: file.path, at: method.location)
            }
        }
    }

    private mutating func register(_ message: MessageAST, scope: String, file: String) {
        let name = Self.qualify(scope, message.name)
        define(name, .message, file: file, at: message.location)
        for field in message.fields { define(name + "." + field.name, .field, file: file, at: field.location) }
        for oneof in message.oneofs { define(name + "." + oneof.name, .oneof, file: file, at: oneof.location) }
        for nested in message.messages { register(nested, scope: name, file: file) }
        for nested in message.enums { register(nested, scope: name, file: file) }
    }

    private mutating func register(_ enumeration: EnumAST, scope: String, file: String) {
        let name = Self.qualify(scope, enumeration.name)
        define(name, .enumeration, file: file, at: enumeration.location)
        for value in enumeration.values {
            define(Self.qualify(scope, value.name), .enumValue, file: file, at: value.location)
        }
    }

    static func qualify(_ scope: String, _ name: String) -> String { scope.isEmpty ? name : scope + "." + name }

    /// The files whose definitions `path` can see: itself, its imports, and what those re-export with `import public`.
    private func visibleFiles(from path: String) -> Set<String> {
        var visible: Set<String> = [path]
        guard let ast = asts[path] else { return visible }
        var queue = ast.imports.map(\.path)
        while let next = queue.popLast() {
            guard visible.insert(next).inserted, let imported = asts[next] else { continue }
            queue += imported.imports.filter { $0.kind == .isPublic }.map(\.path)
        }
        return visible
    }

    // MARK: - Name lookup

    private enum Lookup {
        case found(String, Symbol)
        case notFound
        case partial(String)
        /// Only something that is not a type (a service, a field, an enum value) has this name.
        case notAType
    }

    /// Resolves `name` as protobuf does: innermost scope outward, the first component fixing where the rest is
    /// looked up.
    private func lookup(_ name: String, scope: String, visible: Set<String>) -> Lookup {
        func visibleSymbol(_ full: String) -> Symbol? {
            guard let symbol = symbols[full] else { return nil }
            return symbol.kind == .package || visible.contains(symbol.file) ? symbol : nil
        }
        if name.hasPrefix(".") {
            let full = String(name.dropFirst())
            if let symbol = visibleSymbol(full) { return .found(full, symbol) }
            return .notFound
        }
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        let first = String(parts[0])
        var current = scope
        var sawNonType = false
        while true {
            let candidate = Self.qualify(current, first)
            if let symbol = visibleSymbol(candidate) {
                if parts.count == 1 {
                    if symbol.isType { return .found(candidate, symbol) }
                    sawNonType = true
                } else if symbol.isAggregate {
                    let full = Self.qualify(current, name)
                    if let resolved = visibleSymbol(full) { return .found(full, resolved) }
                    return .partial(full)
                }
            }
            if current.isEmpty { return sawNonType ? .notAType : .notFound }
            if let dot = current.lastIndex(of: ".") {
                current = String(current[..<dot])
            } else {
                current = ""
            }
        }
    }

    private mutating func resolveType(
        _ name: String, scope: String, visible: Set<String>, at location: SourceLocation
    ) -> (String, Symbol.Kind)? {
        switch lookup(name, scope: scope, visible: visible) {
        case .found(let full, let symbol):
            guard symbol.isType else {
                diagnostics.append(Diagnostic("'\(name)' is not a message or enum type", at: location))
                return nil
            }
            return (full, symbol.kind)
        case .partial(let full):
            diagnostics.append(Diagnostic("'\(name)' resolved to '\(full)', which is not defined", at: location))
            return nil
        case .notAType:
            diagnostics.append(Diagnostic("'\(name)' is not a message or enum type", at: location))
            return nil
        case .notFound:
            diagnostics.append(Diagnostic("unknown type '\(name)'", at: location))
            return nil
        }
    }

    // MARK: - Resolution

    private mutating func resolveFile(_ file: FileAST) -> FileIR {
        let package = file.package ?? ""
        let visible = visibleFiles(from: file.path)
        let messages = file.messages.map { resolveMessage($0, scope: package, visible: visible) }
        let enums = file.enums.map { resolveEnum($0, scope: package) }
        var services: [ServiceIR] = []
        for service in file.services {
            var methods: [MethodIR] = []
            for method in service.methods {
                let input = resolveMessageType(
                    method.inputType, scope: package, visible: visible, at: method.inputLocation)
                let output = resolveMessageType(
                    method.outputType, scope: package, visible: visible, at: method.outputLocation)
                methods.append(
                    MethodIR(
                        name: method.name, inputType: input, outputType: output,
                        clientStreaming: method.clientStreaming, serverStreaming: method.serverStreaming,
                        comment: method.comment
                    ))
            }
            services.append(
                ServiceIR(
                    name: service.name, fullName: Self.qualify(package, service.name), methods: methods,
                    comment: service.comment))
        }
        return FileIR(
            path: file.path, package: package,
            dependencies: file.imports.map(\.path),
            publicDependencies: file.imports.filter { $0.kind == .isPublic }.map(\.path),
            messages: messages, enums: enums, services: services
        )
    }

    private mutating func resolveMessageType(
        _ name: String, scope: String, visible: Set<String>, at location: SourceLocation
    ) -> String {
        guard let (full, kind) = resolveType(name, scope: scope, visible: visible, at: location) else { return name }
        if kind != .message {
            diagnostics.append(Diagnostic("'\(name)' is not a message type", at: location))
        }
        return full
    }

    private mutating func resolveFieldType(
        _ type: TypeRefAST, scope: String, visible: Set<String>, at location: SourceLocation
    ) -> FieldTypeIR {
        switch type {
        case .scalar(let scalar): return .scalar(scalar)
        case .map(let key, let value):
            return .map(key: key, value: resolveFieldType(value, scope: scope, visible: visible, at: location))
        case .named(let name):
            guard let (full, kind) = resolveType(name, scope: scope, visible: visible, at: location) else {
                return .message(name)
            }
            return kind == .enumeration ? .enumeration(full) : .message(full)
        }
    }

    private mutating func checkReserved(_ reserved: ReservedAST, owner: String) {
        let sorted = reserved.ranges.sorted { $0.0.lowerBound < $1.0.lowerBound }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.0.overlaps(b.0) {
            diagnostics.append(
                Diagnostic(
                    "reserved range \(b.0.lowerBound) to \(b.0.upperBound) overlaps another reserved range in '\(owner)'",
                    at: b.1))
        }
    }

    private mutating func resolveMessage(_ message: MessageAST, scope: String, visible: Set<String>) -> MessageIR {
        let fullName = Self.qualify(scope, message.name)
        var fields: [FieldIR] = []
        var numbers: [Int: String] = [:]
        var jsonNames: [String: String] = [:]
        checkReserved(message.reserved, owner: message.name)
        for field in message.fields {
            let type = resolveFieldType(field.type, scope: fullName, visible: visible, at: field.typeLocation)
            if field.number < 1 || field.number > 536_870_911 {
                diagnostics.append(
                    Diagnostic(
                        "field number \(field.number) of '\(field.name)' is out of range: field numbers are 1 to 536870911",
                        at: field.location))
            } else if (19_000...19_999).contains(field.number) {
                diagnostics.append(
                    Diagnostic(
                        "field number \(field.number) of '\(field.name)' is reserved for the protobuf implementation (19000 to 19999)",
                        at: field.location))
            }
            if let other = numbers[field.number] {
                diagnostics.append(
                    Diagnostic(
                        "field number \(field.number) has already been used in '\(message.name)' by field '\(other)'",
                        at: field.location))
            } else {
                numbers[field.number] = field.name
            }
            if let (range, _) = message.reserved.ranges.first(where: { $0.0.contains(field.number) }) {
                let text = range.count == 1 ? "\(range.lowerBound)" : "\(range.lowerBound) to \(range.upperBound)"
                diagnostics.append(
                    Diagnostic(
                        "field '\(field.name)' uses reserved number \(field.number) (reserved \(text))",
                        at: field.location))
            }
            if message.reserved.names.contains(where: { $0.0 == field.name }) {
                diagnostics.append(Diagnostic("field name '\(field.name)' is reserved", at: field.location))
            }
            var jsonName = Self.jsonName(field.name)
            if let option = field.options.first(where: { $0.name == "json_name" }) { jsonName = option.value }
            let defaultJSON = Self.jsonName(field.name).lowercased()
            if let other = jsonNames[defaultJSON], other != field.name {
                diagnostics.append(
                    Diagnostic(
                        "the JSON name of field '\(field.name)' conflicts with field '\(other)'", at: field.location))
            } else {
                jsonNames[defaultJSON] = field.name
            }
            var label: FieldLabel =
                switch field.label {
                case .none: .singular
                case .optional: .optional
                case .repeated: .repeated
                }
            var isPacked = false
            if label == .repeated, case .scalar(let scalar) = type { isPacked = scalar.isPackable }
            if label == .repeated, case .enumeration = type { isPacked = true }
            if let option = field.options.first(where: { $0.name == "packed" }) {
                if !isPacked && option.value == "true" {
                    diagnostics.append(
                        Diagnostic(
                            "[packed = true] can only be specified for repeated primitive fields", at: option.location))
                }
                if option.value == "false" { isPacked = false }
            }
            let deprecated = field.options.contains { $0.name == "deprecated" && $0.value == "true" }
            if case .map = type {
                label = .repeated
                isPacked = false
            }
            fields.append(
                FieldIR(
                    name: field.name, number: field.number, label: label, type: type, oneofIndex: field.oneofIndex,
                    isPacked: isPacked, jsonName: jsonName, isDeprecated: deprecated, comment: field.comment
                ))
        }
        for (index, oneof) in message.oneofs.enumerated()
        where !message.fields.contains(where: { $0.oneofIndex == index }) {
            diagnostics.append(Diagnostic("oneof '\(oneof.name)' must have at least one field", at: oneof.location))
        }
        if message.options.contains(where: { $0.name == "map_entry" }) {
            diagnostics.append(
                Diagnostic(
                    "map_entry should not be set explicitly; use map<KeyType, ValueType> instead", at: message.location)
            )
        }
        return MessageIR(
            name: message.name, fullName: fullName, fields: fields,
            oneofs: message.oneofs.map { OneofIR(name: $0.name, comment: $0.comment) },
            messages: message.messages.map { resolveMessage($0, scope: fullName, visible: visible) },
            enums: message.enums.map { resolveEnum($0, scope: fullName) },
            reservedRanges: message.reserved.ranges.map(\.0),
            reservedNames: message.reserved.names.map(\.0),
            comment: message.comment
        )
    }

    private mutating func resolveEnum(_ enumeration: EnumAST, scope: String) -> EnumIR {
        let allowAlias = enumeration.options.contains { $0.name == "allow_alias" && $0.value == "true" }
        checkReserved(enumeration.reserved, owner: enumeration.name)
        if enumeration.values.isEmpty {
            diagnostics.append(
                Diagnostic("enum '\(enumeration.name)' must contain at least one value", at: enumeration.location))
        } else if enumeration.values[0].number != 0 {
            diagnostics.append(
                Diagnostic(
                    "the first value of enum '\(enumeration.name)' must be zero in proto3",
                    at: enumeration.values[0].location))
        }
        var seen: [Int: String] = [:]
        for value in enumeration.values {
            if let other = seen[value.number], !allowAlias {
                diagnostics.append(
                    Diagnostic(
                        "'\(value.name)' uses the same number as '\(other)'; to allow this, set 'option allow_alias = true;'",
                        at: value.location))
            } else if seen[value.number] == nil {
                seen[value.number] = value.name
            }
            if enumeration.reserved.ranges.contains(where: { $0.0.contains(value.number) }) {
                diagnostics.append(
                    Diagnostic("enum value '\(value.name)' uses reserved number \(value.number)", at: value.location))
            }
            if enumeration.reserved.names.contains(where: { $0.0 == value.name }) {
                diagnostics.append(Diagnostic("enum value name '\(value.name)' is reserved", at: value.location))
            }
        }
        if allowAlias && seen.count == enumeration.values.count {
            if let option = enumeration.options.first(where: { $0.name == "allow_alias" }) {
                diagnostics.append(
                    Diagnostic(
                        "'allow_alias' is set on enum '\(enumeration.name)' but no two values share a number",
                        at: option.location))
            }
        }
        return EnumIR(
            name: enumeration.name, fullName: Self.qualify(scope, enumeration.name),
            values: enumeration.values.map {
                EnumValueIR(name: $0.name, number: Int32(truncatingIfNeeded: $0.number), comment: $0.comment)
            },
            allowAlias: allowAlias,
            reservedRanges: enumeration.reserved.ranges.map(\.0),
            reservedNames: enumeration.reserved.names.map(\.0),
            comment: enumeration.comment
        )
    }

    /// protoc's default JSON name: underscores removed, the letter after each capitalised.
    static func jsonName(_ name: String) -> String {
        var result = ""
        var capitalizeNext = false
        for character in name {
            if character == "_" {
                capitalizeNext = true
            } else if capitalizeNext {
                result += character.uppercased()
                capitalizeNext = false
            } else {
                result.append(character)
            }
        }
        return result
    }
}
