/// The access level of generated declarations.
public enum GeneratedVisibility: String, Sendable, Hashable, CaseIterable {
    case `public`, package, `internal`

    var keyword: String {
        switch self {
        case .public: "public "
        case .package: "package "
        case .internal: ""
        }
    }
}

/// What every emitter needs to know beyond the file it is emitting: Swift names of all types in scope, the
/// message graph (to box recursive fields) and the options.
public struct GenerationContext: Sendable {
    /// Options for one generator run.
    public struct Options: Sendable, Hashable {
        public var visibility: GeneratedVisibility
        /// Swift modules that hold the generated code of imported files, by .proto path
        /// (`google/protobuf/timestamp.proto` → `ProtoWellKnownTypes`).
        public var moduleMappings: [String: String]
        /// Also emit a server protocol and a client for each service (code that imports `ShoalRPC`).
        public var rpc: Bool

        public init(
            visibility: GeneratedVisibility = .public, moduleMappings: [String: String] = [:], rpc: Bool = false
        ) {
            self.visibility = visibility
            self.moduleMappings = moduleMappings
            self.rpc = rpc
        }

        /// The well-known types Shoal ships, generated into the `ProtoWellKnownTypes` module.
        public static let wellKnownTypeModules: [String: String] = [
            "google/protobuf/empty.proto": "ProtoWellKnownTypes",
            "google/protobuf/timestamp.proto": "ProtoWellKnownTypes",
            "google/protobuf/duration.proto": "ProtoWellKnownTypes",
        ]
    }

    public let options: Options
    let files: [String: FileIR]
    private(set) var swiftNames: [String: String] = [:]
    private(set) var messages: [String: MessageIR] = [:]

    public init(files: [String: FileIR], options: Options) {
        self.files = files
        self.options = options
        for file in files.values {
            let prefix = SwiftNaming.packagePrefix(file.package)
            for message in file.messages { index(message, swiftName: prefix + SwiftNaming.typeName(message.name)) }
            for enumeration in file.enums {
                swiftNames[enumeration.fullName] = prefix + SwiftNaming.typeName(enumeration.name)
            }
        }
    }

    private mutating func index(_ message: MessageIR, swiftName: String) {
        swiftNames[message.fullName] = swiftName
        messages[message.fullName] = message
        for nested in message.messages { index(nested, swiftName: swiftName + "." + SwiftNaming.typeName(nested.name)) }
        for nested in message.enums {
            swiftNames[nested.fullName] = swiftName + "." + SwiftNaming.typeName(nested.name)
        }
    }

    var access: String { options.visibility.keyword }

    /// The Swift type name for a fully-qualified proto name.
    func swiftName(_ fullName: String) -> String { swiftNames[fullName] ?? fullName }

    func swiftServiceName(_ service: ServiceIR, in file: FileIR) -> String {
        SwiftNaming.packagePrefix(file.package) + service.name
    }

    /// Whether the singular message field or oneof member of type `target` inside `owner` closes a cycle of
    /// inline struct storage, and so must be boxed.
    func needsBox(owner: String, target: String) -> Bool {
        var seen: Set<String> = []
        var stack = [target]
        while let current = stack.popLast() {
            if current == owner { return true }
            guard seen.insert(current).inserted, let message = messages[current] else { continue }
            for field in message.fields where field.label != .repeated {
                if case .message(let next) = field.type { stack.append(next) }
            }
        }
        return false
    }
}
