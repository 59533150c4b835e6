import ConformanceMessages
import Foundation
import ProtoGenCore
import ProtoRuntime
import Testing

/// The generator's resolved model must equal what protoc makes of the same files: for every .proto in the
/// repository, `protoc --descriptor_set_out` is decoded with Shoal's own codec (a proto3 rendering of
/// descriptor.proto) and compared with the resolver's output, normalised to one shape.
@Suite("Agreement with protoc")
struct ProtocAgreementTests {
    typealias FileSet = Shoal_Descriptor_V1_FileDescriptorSet
    static let protoPaths = ["Tests/Protos", "Protos"].map { repositoryRoot.appendingPathComponent($0).path }

    /// Every .proto under the proto paths, as import paths.
    static var allProtos: [String] {
        var result: [String] = []
        for root in protoPaths {
            let enumerator = FileManager.default.enumerator(atPath: root)
            while let path = enumerator?.nextObject() as? String {
                if path.hasSuffix(".proto") { result.append(path) }
            }
        }
        return result.sorted()
    }

    @Test("the repository has protos to check")
    func found() {
        #expect(Self.allProtos.count >= 7)
        #expect(Self.allProtos.contains("conformance/v1/all_types.proto"))
    }

    @Test("each .proto resolves to the same model as protoc's descriptor set", arguments: allProtos)
    func agrees(_ path: String) throws {
        let expected = try Self.protocModel(path)
        var resolver = Resolver(provider: FileSystemSourceProvider(protoPaths: Self.protoPaths))
        let file = try #require(try resolver.resolve([path])[path])
        let actual = NFile(file)
        #expect(actual == expected)
        if actual != expected {
            for (a, e) in zip(actual.messages, expected.messages) where a != e {
                Issue.record("first differing message:\nshoal:  \(a)\nprotoc: \(e)")
                break
            }
        }
    }

    static func protocModel(_ path: String) throws -> NFile {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("shoal-\(UUID().uuidString).pb")
        defer { try? FileManager.default.removeItem(at: output) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["protoc"] + protoPaths.map { "-I\($0)" } + ["--descriptor_set_out=\(output.path)", path]
        let stderr = Pipe()
        process.standardError = stderr
        try process.run()
        process.waitUntilExit()
        let message = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        try #require(process.terminationStatus == 0, "protoc failed (make deps installs protobuf-compiler): \(message)")
        let set = try FileSet(serializedBytes: [UInt8](try Data(contentsOf: output)))
        return NFile(try #require(set.file.first))
    }
}

// MARK: - One normalised shape for both sides

struct NField: Hashable, CustomStringConvertible {
    var name: String
    var number: Int
    var label: Int  // 1 optional/singular, 3 repeated
    var type: Int  // FieldDescriptorProto.Type numbering
    var typeName: String
    var oneofIndex: Int?
    var proto3Optional: Bool
    var jsonName: String
    var explicitlyUnpacked: Bool

    var description: String {
        "\(name)=\(number) l\(label) t\(type) \(typeName) oneof:\(oneofIndex.map(String.init) ?? "-") opt:\(proto3Optional) json:\(jsonName) unpacked:\(explicitlyUnpacked)"
    }
}

struct NEnum: Hashable {
    var name: String
    var values: [String]
    var reservedRanges: [[Int]]  // inclusive
    var reservedNames: [String]
    var allowAlias: Bool
}

struct NMessage: Hashable, CustomStringConvertible {
    var name: String
    var fields: [NField]
    var oneofs: [String]
    var nested: [NMessage]  // sorted by name
    var enums: [NEnum]  // sorted by name
    var reservedRanges: [[Int]]  // end exclusive
    var reservedNames: [String]
    var isMapEntry: Bool

    var description: String {
        "\(name) fields[\(fields.map(\.description).joined(separator: "; "))] oneofs\(oneofs) nested\(nested.map(\.name)) enums\(enums.map(\.name)) reserved\(reservedRanges)\(reservedNames) map:\(isMapEntry)"
    }
}

struct NFile: Hashable {
    var name: String
    var package: String
    var dependencies: [String]
    var publicDependencies: [Int]
    var messages: [NMessage]
    var enums: [NEnum]
    var services: [String]
}

extension NFile {
    init(_ d: Shoal_Descriptor_V1_FileDescriptorProto) {
        name = d.name ?? ""
        package = d.package ?? ""
        dependencies = d.dependency
        publicDependencies = d.publicDependency.map(Int.init)
        messages = d.messageType.map(NMessage.init)
        enums = d.enumType.map(NEnum.init)
        services = d.service.flatMap { service in
            service.method.map { m in
                "\(service.name ?? "").\(m.name ?? "")(\(m.clientStreaming == true ? "stream " : "")\(m.inputType ?? "")) -> \(m.serverStreaming == true ? "stream " : "")\(m.outputType ?? "")"
            }
        }
    }

    init(_ file: FileIR) {
        name = file.path
        package = file.package
        dependencies = file.dependencies
        publicDependencies = file.publicDependencies.compactMap { file.dependencies.firstIndex(of: $0) }
        messages = file.messages.map(NMessage.init)
        enums = file.enums.map(NEnum.init)
        services = file.services.flatMap { service in
            service.methods.map { m in
                "\(service.name).\(m.name)(\(m.clientStreaming ? "stream " : "").\(m.inputType)) -> \(m.serverStreaming ? "stream " : "").\(m.outputType)"
            }
        }
    }
}

extension NEnum {
    init(_ d: Shoal_Descriptor_V1_EnumDescriptorProto) {
        name = d.name ?? ""
        values = d.value.map { "\($0.name ?? "")=\($0.number ?? 0)" }
        reservedRanges = d.reservedRange.map { [Int($0.start ?? 0), Int($0.end ?? 0)] }
        reservedNames = d.reservedName
        allowAlias = d.options?.allowAlias ?? false
    }

    init(_ e: EnumIR) {
        name = e.name
        values = e.values.map { "\($0.name)=\($0.number)" }
        reservedRanges = e.reservedRanges.map { [$0.lowerBound, $0.upperBound] }
        reservedNames = e.reservedNames
        allowAlias = e.allowAlias
    }
}

extension NMessage {
    init(_ d: Shoal_Descriptor_V1_DescriptorProto) {
        name = d.name ?? ""
        fields = d.field.map { f in
            NField(
                name: f.name ?? "", number: Int(f.number ?? 0), label: Int(f.label?.rawValue ?? 0),
                type: Int(f.type?.rawValue ?? 0), typeName: f.typeName ?? "", oneofIndex: f.oneofIndex.map(Int.init),
                proto3Optional: f.proto3Optional ?? false,
                jsonName: f.jsonName ?? Self.camelCase(f.name ?? "", capitalizingFirst: false),
                explicitlyUnpacked: f.options?.packed == false
            )
        }
        oneofs = d.oneofDecl.map { $0.name ?? "" }
        nested = d.nestedType.map(NMessage.init).sorted { $0.name < $1.name }
        enums = d.enumType.map(NEnum.init).sorted { $0.name < $1.name }
        reservedRanges = d.reservedRange.map { [Int($0.start ?? 0), Int($0.end ?? 0)] }
        reservedNames = d.reservedName
        isMapEntry = d.options?.mapEntry ?? false
    }

    init(_ m: MessageIR) {
        name = m.name
        var synthetic: [String] = []
        var entries: [NMessage] = []
        fields = m.fields.map { f in
            var oneofIndex = f.oneofIndex
            if f.label == .optional {
                oneofIndex = m.oneofs.count + synthetic.count
                synthetic.append("_" + f.name)
            }
            var (type, typeName) = Self.type(f.type)
            if case .map(let key, let value) = f.type {
                let entryName = Self.camelCase(f.name, capitalizingFirst: true) + "Entry"
                typeName = "." + m.fullName + "." + entryName
                let (keyType, _) = Self.type(.scalar(key))
                let (valueType, valueTypeName) = Self.type(value)
                entries.append(
                    NMessage(
                        name: entryName,
                        fields: [
                            NField(
                                name: "key", number: 1, label: 1, type: keyType, typeName: "", oneofIndex: nil,
                                proto3Optional: false, jsonName: "key", explicitlyUnpacked: false),
                            NField(
                                name: "value", number: 2, label: 1, type: valueType, typeName: valueTypeName,
                                oneofIndex: nil, proto3Optional: false, jsonName: "value", explicitlyUnpacked: false),
                        ],
                        oneofs: [], nested: [], enums: [], reservedRanges: [], reservedNames: [], isMapEntry: true
                    ))
            }
            let packable: Bool =
                switch f.type {
                case .scalar(let s): s != .string && s != .bytes
                case .enumeration: true
                default: false
                }
            return NField(
                name: f.name, number: f.number, label: f.label == .repeated ? 3 : 1, type: type, typeName: typeName,
                oneofIndex: oneofIndex, proto3Optional: f.label == .optional, jsonName: f.jsonName,
                explicitlyUnpacked: f.label == .repeated && packable && !f.isPacked
            )
        }
        oneofs = m.oneofs.map(\.name) + synthetic
        nested = (m.messages.map(NMessage.init) + entries).sorted { $0.name < $1.name }
        enums = m.enums.map(NEnum.init).sorted { $0.name < $1.name }
        reservedRanges = m.reservedRanges.map { [$0.lowerBound, $0.upperBound + 1] }
        reservedNames = m.reservedNames
        isMapEntry = false
    }

    static func type(_ type: FieldTypeIR) -> (Int, String) {
        switch type {
        case .scalar(let s):
            let number =
                switch s {
                case .double: 1
                case .float: 2
                case .int64: 3
                case .uint64: 4
                case .int32: 5
                case .fixed64: 6
                case .fixed32: 7
                case .bool: 8
                case .string: 9
                case .bytes: 12
                case .uint32: 13
                case .sfixed32: 15
                case .sfixed64: 16
                case .sint32: 17
                case .sint64: 18
                }
            return (number, "")
        case .enumeration(let name): return (14, "." + name)
        case .message(let name): return (11, "." + name)
        case .map: return (11, "")
        }
    }

    /// protoc's camel casing: underscores dropped, the letter after each capitalised (and the first letter too for
    /// a map entry's type name; JSON names keep it).
    static func camelCase(_ name: String, capitalizingFirst: Bool) -> String {
        var result = ""
        var upper = capitalizingFirst
        for c in name {
            if c == "_" {
                upper = true
            } else {
                result += upper ? c.uppercased() : String(c)
                upper = false
            }
        }
        return result
    }
}
