import ConformanceMessages
import Foundation
import ProtoGenCore
import ProtoRuntime
import Testing

/// The repository root, from this file's path.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

@Suite("Generated code")
struct GoldenTests {
    /// Set PROTOGEN_UPDATE_GOLDEN=1 to rewrite the golden file after an intended change to the output.
    @Test("golden.proto generates exactly the committed Swift")
    func golden() throws {
        let provider = FileSystemSourceProvider(protoPaths: [
            repositoryRoot.appendingPathComponent("Tests/Protos").path,
            repositoryRoot.appendingPathComponent("Protos").path,
        ])
        let files = try SwiftGenerator(provider: provider).generate(["golden/v1/golden.proto"])
        #expect(files.map(\.name) == ["golden_v1_golden.pb.swift"])
        let url = repositoryRoot.appendingPathComponent("Tests/ProtoGenCoreTests/Golden/golden_v1_golden.pb.swift")
        if ProcessInfo.processInfo.environment["PROTOGEN_UPDATE_GOLDEN"] == "1" {
            try files[0].contents.write(to: url, atomically: true, encoding: .utf8)
        }
        let golden = try String(contentsOf: url, encoding: .utf8)
        #expect(files[0].contents == golden, "generated code differs from Golden/ (PROTOGEN_UPDATE_GOLDEN=1 to accept)")
    }

    @Test("the generated code is what the build plugin compiled (the golden proto is part of ConformanceMessages)")
    func goldenCompiles() {
        // Compiles only if the generated types exist with these shapes.
        var droplet = Golden_V1_Droplet(id: 1, class: "c", default: true, self_: 2, backupHour: 3)
        droplet.parent = Golden_V1_Droplet(name: "p")
        droplet.hypervisorId = 9
        #expect(droplet.parent?.name == "p")
        #expect(droplet.placement == .hypervisorId(9))
        #expect(Golden_V1_DropletState.running == .active)
        #expect(Golden_V1_Droplet.Address.Family(rawValue: 2) == .ipv6)
        #expect(Golden_V1_DropletService.Method.Watch.descriptor.kind == .serverStreaming)
    }

    @Test("output names flatten the proto path")
    func outputNames() {
        #expect(SwiftGenerator.outputName(for: "bench/v1/bench.proto") == "bench_v1_bench.pb.swift")
        #expect(SwiftGenerator.outputName(for: "top.proto") == "top.pb.swift")
    }

    @Test("visibility and module mappings are honoured")
    func options() throws {
        let provider = InMemorySourceProvider(files: [
            "a/v1/a.proto": "syntax = \"proto3\"; package a.v1; import \"b/v1/b.proto\"; message A { b.v1.B b = 1; }",
            "b/v1/b.proto": "syntax = \"proto3\"; package b.v1; message B {}",
        ])
        let options = GenerationContext.Options(visibility: .package, moduleMappings: ["b/v1/b.proto": "BModule"])
        let file = try SwiftGenerator(provider: provider, options: options).generate(["a/v1/a.proto"])[0]
        #expect(file.contents.contains("public import BModule"))
        #expect(file.contents.contains("package struct A_V1_A: Sendable, Hashable"))
        #expect(file.contents.contains("package var b: B_V1_B? = nil"))
        let internalFile = try SwiftGenerator(provider: provider, options: .init(visibility: .internal)).generate([
            "a/v1/a.proto"
        ])[0]
        #expect(internalFile.contents.contains("\nimport ProtoRuntime"))
        #expect(internalFile.contents.contains("\nstruct A_V1_A: Sendable, Hashable"))
    }
}
