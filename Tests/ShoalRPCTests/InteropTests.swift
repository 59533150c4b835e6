import Foundation
import InteropService
import NIOCore
import RPCTestServices
import ShoalRPC
import TestSupport
import Testing

/// Python grpcio (from pip, installed by `make interop-deps`) against ShoalRPC, both ways.
enum Interop {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let python = root.appendingPathComponent(".build-interop/venv/bin/python").path
    static let stubs = root.appendingPathComponent(".build-interop/stubs").path
    static let scripts = root.appendingPathComponent("Tests/Interop").path

    static func requirePython() throws {
        guard FileManager.default.isExecutableFile(atPath: python),
            FileManager.default.fileExists(atPath: stubs + "/rpctest/v1/rpctest_pb2_grpc.py")
        else {
            throw InteropError(
                "grpcio is not installed for the interop tests: run `make interop-deps` (make test does)")
        }
    }

    struct InteropError: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    /// Kills a child process and reaps it. SIGKILL: children of the test runner may start with SIGTERM blocked.
    static func stop(_ process: Process) {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Runs a Python script to completion (at most `timeout`), returning its exit status and output.
    static func run(
        _ script: String, _ arguments: [String], timeout: Duration = .seconds(60)
    ) async throws -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = ["\(scripts)/\(script)"] + arguments
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("interop-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: output.path, contents: nil)
        let handle = try FileHandle(forWritingTo: output)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        defer {
            stop(process)
            try? handle.close()
            try? FileManager.default.removeItem(at: output)
        }
        let finished = await eventually(timeout: timeout) { !process.isRunning }
        if !finished { stop(process) }
        let text = (try? String(contentsOf: output, encoding: .utf8)) ?? ""
        return (finished ? process.terminationStatus : -1, text)
    }
}

@Suite("interop with Python grpcio", .serialized)
struct InteropTests {
    @Test(
        "a grpcio client calls a Shoal server: four call kinds, metadata, gzip, every status code, deadlines, cancellation"
    )
    func grpcioClient() async throws {
        try Interop.requirePython()
        try await withServer([ProbeService()], configure: { $0.responseCompression = .gzip }) { _, _, port in
            let (status, output) = try await Interop.run(
                "probe_client.py", ["--port", String(port), "--stubs", Interop.stubs])
            #expect(status == 0, "\(output)")
            #expect(output.contains("all checks passed"), "\(output)")
            #expect(output.components(separatedBy: "\nok ").count >= 20, "\(output)")
        }
    }

    @Test(
        "gRPC's interop test cases from a grpcio client against grpc.testing.TestService on Shoal",
        arguments: [false, true])
    func interopCases(tls: Bool) async throws {
        try Interop.requirePython()
        var configuration = RPCServer.Configuration(host: "127.0.0.1", port: 0)
        configuration.responseCompression = .gzip
        var extra: [String] = []
        if tls {
            let certificates = try TestCertificates.shared.get()
            configuration.tls = .server(
                certificateChain: certificates.serverCertificate, privateKey: certificates.serverKey)
            extra = ["--tls-ca", certificates.ca]
        }
        let server = RPCServer(configuration: configuration, services: [InteropTestService()])
        let port = try #require(try await server.start().port)
        let (status, output) = try await Interop.run(
            "interop_client.py", ["--port", String(port), "--stubs", Interop.stubs] + extra)
        await server.shutdownGracefully(timeout: .seconds(5))
        #expect(status == 0, "\(output)")
        #expect(output.contains("all interop cases passed"), "\(output)")
    }

    @Test("a Shoal client calls a grpcio server: four call kinds, metadata, gzip both ways, status codes, deadlines")
    func grpcioServer() async throws {
        try Interop.requirePython()
        let portFile = FileManager.default.temporaryDirectory.appendingPathComponent("probe-port-\(UUID().uuidString)")
            .path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Interop.python)
        process.arguments = ["\(Interop.scripts)/probe_server.py", "--port-file", portFile, "--stubs", Interop.stubs]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        defer {
            Interop.stop(process)
            try? FileManager.default.removeItem(atPath: portFile)
        }
        let started = await eventually(timeout: .seconds(30)) { FileManager.default.fileExists(atPath: portFile) }
        try #require(started, "the grpcio server did not start")
        let port = try #require(Int(try String(contentsOfFile: portFile, encoding: .utf8)))
        let client = RPCClient(targets: [("127.0.0.1", port)])
        defer { Task { await client.close() } }
        let probe = Rpctest_V1_Probe.Client(client)
        let options = CallOptions(timeout: .seconds(10))

        var metadata: Metadata = ["echo-me": "hi"]
        metadata.add("echo-me-bin", binary: [1, 2, 3])
        let response = try await probe.echo(
            Request(text: "héllo", number: 42, payload: [0, 1, 255]), metadata: metadata, options: options)
        #expect(response.text == "héllo" && response.number == 42 && response.payload == [0, 1, 255])
        #expect(response.metadata.contains("echo-me=hi"))
        #expect(response.metadata.contains("echo-me-bin=1,2,3"))

        let initial = try await client.serverStreaming(
            Rpctest_V1_Probe.Method.Echo.descriptor, request: Request(), metadata: metadata, options: options
        ) {
            (stream: RPCResponseStream<Response>) in
            for try await _ in stream {}
            return stream.initialMetadata
        }
        #expect(initial["echoed"] == "hi")
        #expect(initial[binary: "echoed-bin"] == [1, 2, 3])

        let big = [UInt8]((0..<100_000).map { UInt8(truncatingIfNeeded: $0 % 7) })
        let zipped = try await probe.echo(
            Request(payload: big), options: CallOptions(timeout: .seconds(10), compression: .gzip))
        #expect(zipped.payload == big)

        let numbers = try await probe.expand(Request(count: 300), options: options) { stream in
            var numbers: [Int64] = []
            for try await response in stream { numbers.append(response.number) }
            return numbers
        }
        #expect(numbers == (0..<300).map(Int64.init))

        let sum = try await probe.collect(options: options) { writer in
            for number in 1...100 { try await writer.write(Request(number: Int64(number))) }
        }
        #expect(sum.number == 5050)

        let answers = try await probe.converse(options: options) { writer in
            for number in 0..<50 { try await writer.write(Request(text: "m\(number)", number: Int64(number))) }
        } handler: { stream in
            var answers: [Response] = []
            for try await answer in stream { answers.append(answer) }
            return answers
        }
        #expect(answers.count == 50 && answers.first?.text == "M0" && answers.last?.number == 98)

        for code in [
            RPCError.Code.invalidArgument, .notFound, .permissionDenied, .resourceExhausted, .unavailable,
            .unauthenticated,
        ] {
            let error = await expectRPCError(code) {
                try await probe.echo(Request(text: "ünïcode 100%", failCode: Int32(code.rawValue)), options: options)
            }
            #expect(error?.message == "failing as asked: ünïcode 100%")
            #expect(error?.metadata["failure-reason"] == "requested")
        }

        await expectRPCError(.deadlineExceeded) {
            try await probe.echo(Request(delayMs: 5000), options: CallOptions(timeout: .milliseconds(200)))
        }
        let missing = ProtoMethodDescriptor(
            service: "rpctest.v1.Probe", method: "Nope", kind: .unary, inputType: "", outputType: "")
        await expectRPCError(.unimplemented) {
            let _: Response = try await client.unary(missing, request: Request(), options: options)
        }
        let reply1 = try await probe.echo(Request(text: "end"), options: options)
        #expect(reply1.text == "end")
    }
}
