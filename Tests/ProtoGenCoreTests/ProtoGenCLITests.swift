import Foundation
import Testing

/// The `protogen` executable, as the build plugin and other build systems run it.
@Suite("protogen command line")
struct ProtoGenCLITests {
    /// `protogen` is built beside the test bundle.
    static var executable: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("protogen")
    }

    struct Result {
        var status: Int32
        var stderr: String
    }

    func run(_ arguments: [String]) throws -> Result {
        let process = Process()
        process.executableURL = Self.executable
        process.arguments = arguments
        process.currentDirectoryURL = repositoryRoot
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = Pipe()
        try process.run()
        let text = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return Result(status: process.terminationStatus, stderr: text)
    }

    @Test("writes the same Swift as the library, named after the .proto path")
    func generates() throws {
        try #require(
            FileManager.default.isExecutableFile(atPath: Self.executable.path),
            "protogen not built at \(Self.executable.path)")
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("protogen-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: output) }
        let result = try run(["--out", output.path, "-I", "Tests/Protos", "-I", "Protos", "golden/v1/golden.proto"])
        #expect(result.status == 0, "\(result.stderr)")
        let generated = try String(
            contentsOf: output.appendingPathComponent("golden_v1_golden.pb.swift"), encoding: .utf8)
        let golden = try String(
            contentsOf: repositoryRoot.appendingPathComponent(
                "Tests/ProtoGenCoreTests/Golden/golden_v1_golden.pb.swift"), encoding: .utf8)
        #expect(generated == golden)
    }

    @Test("reports problems as file:line:column with the file's real path, and exits 1")
    func diagnostics() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("protogen-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try "syntax = \"proto3\";\nmessage A {\n  Missing m = 1;\n}\n".write(
            to: directory.appendingPathComponent("bad.proto"), atomically: true, encoding: .utf8)
        let result = try run(["--out", directory.appendingPathComponent("out").path, "-I", directory.path, "bad.proto"])
        #expect(result.status == 1)
        #expect(result.stderr == "\(directory.path)/bad.proto:3:3: unknown type 'Missing'\n")
    }

    @Test("usage errors exit 2 with the usage text")
    func usage() throws {
        let missingOut = try run(["x.proto"])
        #expect(missingOut.status == 2)
        #expect(missingOut.stderr.contains("--out is required"))
        let badVisibility = try run(["--out", "/tmp/x", "--visibility", "open", "x.proto"])
        #expect(badVisibility.status == 2)
        #expect(badVisibility.stderr.contains("unknown visibility 'open'"))
    }
}
