import Foundation
import NIOCore
import RPCTestServices
import ShoalRPC
import Testing

/// Certificates made at test time with the openssl command: a CA, a server certificate for localhost and
/// 127.0.0.1, a client certificate, and the same from a second CA nobody trusts.
struct TestCertificates {
    let directory: String
    var ca: String { directory + "/ca.pem" }
    var serverCertificate: String { directory + "/server.pem" }
    var serverKey: String { directory + "/server.key" }
    var clientCertificate: String { directory + "/client.pem" }
    var clientKey: String { directory + "/client.key" }
    var rogueCA: String { directory + "/rogue-ca.pem" }
    var rogueClientCertificate: String { directory + "/rogue-client.pem" }
    var rogueClientKey: String { directory + "/rogue-client.key" }

    static let shared: Result<TestCertificates, any Error> = Result { try TestCertificates.make() }

    static func make() throws -> TestCertificates {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("shoal-tls-\(UUID().uuidString)")
            .path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let script = """
            set -e
            cd '\(directory)'
            key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$1" 2>/dev/null; }
            ca() { key "$1.key"; openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 2 -subj "/CN=$2" 2>/dev/null; }
            leaf() { # name ca cn san
              key "$1.key"
              openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$3" 2>/dev/null
              printf 'subjectAltName=%s\\n' "$4" > "$1.ext"
              openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -out "$1.pem" -days 2 -extfile "$1.ext" 2>/dev/null
            }
            ca ca "Shoal Test CA"
            ca rogue-ca "Rogue CA"
            leaf server ca localhost "DNS:localhost,IP:127.0.0.1"
            leaf client ca client "DNS:client"
            leaf rogue-client rogue-ca client "DNS:client"
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", script]
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw RPCError(code: .internal, message: "openssl could not make test certificates")
        }
        return TestCertificates(directory: directory)
    }
}

@Suite("TLS with OpenSSL")
struct TLSTests {
    func withTLSServer(
        clientCA: Bool = false,
        _ body: (Int, TestCertificates) async throws -> Void
    ) async throws {
        let certificates = try TestCertificates.shared.get()
        var configuration = RPCServer.Configuration(host: "127.0.0.1", port: 0)
        configuration.tls = .server(
            certificateChain: certificates.serverCertificate, privateKey: certificates.serverKey,
            clientCertificateAuthority: clientCA ? certificates.ca : nil
        )
        let server = RPCServer(configuration: configuration, services: [ProbeService()])
        let port = try #require(try await server.start().port)
        do {
            try await body(port, certificates)
        } catch {
            await server.shutdownGracefully(timeout: .seconds(5))
            throw error
        }
        await server.shutdownGracefully(timeout: .seconds(5))
    }

    func client(port: Int, host: String = "127.0.0.1", _ tls: TLSConfiguration) -> RPCClient {
        var configuration = RPCClient.Configuration()
        configuration.tls = tls
        return RPCClient(targets: [(host, port)], configuration: configuration)
    }

    @Test("calls over TLS: the server's certificate is checked by name, and by IP address")
    func serverTLS() async throws {
        try await withTLSServer { port, certificates in
            let byName = client(port: port, .client(trustRoots: certificates.ca, serverHostname: "localhost"))
            let probe = Rpctest_V1_Probe.Client(byName)
            let reply1 = try await probe.echo(Request(text: "secret"))
            #expect(reply1.text == "secret")
            let count = try await probe.expand(Request(count: 100, payload: [UInt8](repeating: 1, count: 10_000))) {
                stream in
                var count = 0
                for try await _ in stream { count += 1 }
                return count
            }
            #expect(count == 100)
            await byName.close()

            let byAddress = client(port: port, .client(trustRoots: certificates.ca))
            let reply2 = try await Rpctest_V1_Probe.Client(byAddress).echo(Request(text: "ip"))
            #expect(reply2.text == "ip")
            await byAddress.close()
        }
    }

    @Test("a certificate for another name, or from a CA the client does not trust, fails the call")
    func verification() async throws {
        try await withTLSServer { port, certificates in
            let wrongName = client(port: port, .client(trustRoots: certificates.ca, serverHostname: "other.example"))
            let error = await expectRPCError(.unavailable) {
                try await Rpctest_V1_Probe.Client(wrongName).echo(Request())
            }
            #expect(error?.message.contains("handshake") == true, "\(String(describing: error))")
            await wrongName.close()

            let wrongCA = client(port: port, .client(trustRoots: certificates.rogueCA, serverHostname: "localhost"))
            await expectRPCError(.unavailable) { try await Rpctest_V1_Probe.Client(wrongCA).echo(Request()) }
            await wrongCA.close()

            let plaintext = RPCClient(targets: [("127.0.0.1", port)])
            let plain = await expectRPCError(.unavailable) {
                try await Rpctest_V1_Probe.Client(plaintext).echo(Request())
            }
            #expect(plain != nil)
            await plaintext.close()

            // The server is unharmed.
            let good = client(port: port, .client(trustRoots: certificates.ca, serverHostname: "localhost"))
            let reply3 = try await Rpctest_V1_Probe.Client(good).echo(Request(text: "ok"))
            #expect(reply3.text == "ok")
            await good.close()
        }
    }

    @Test("mutual TLS: the server requires a client certificate from its CA")
    func mutualTLS() async throws {
        try await withTLSServer(clientCA: true) { port, certificates in
            let anonymous = client(port: port, .client(trustRoots: certificates.ca, serverHostname: "localhost"))
            await expectRPCError(.unavailable) { try await Rpctest_V1_Probe.Client(anonymous).echo(Request()) }
            await anonymous.close()

            let rogue = client(
                port: port,
                .client(
                    trustRoots: certificates.ca, serverHostname: "localhost",
                    certificateChain: certificates.rogueClientCertificate, privateKey: certificates.rogueClientKey
                ))
            await expectRPCError(.unavailable) { try await Rpctest_V1_Probe.Client(rogue).echo(Request()) }
            await rogue.close()

            let trusted = client(
                port: port,
                .client(
                    trustRoots: certificates.ca, serverHostname: "localhost",
                    certificateChain: certificates.clientCertificate, privateKey: certificates.clientKey
                ))
            let reply4 = try await Rpctest_V1_Probe.Client(trusted).echo(Request(text: "mutual"))
            #expect(reply4.text == "mutual")
            await trusted.close()
        }
    }

    @Test("a bad TLS configuration is a clear error, not a crash")
    func badConfiguration() async throws {
        var configuration = RPCServer.Configuration()
        configuration.tls = .server(certificateChain: "/nonexistent.pem", privateKey: "/nonexistent.key")
        let server = RPCServer(configuration: configuration, services: [])
        await expectRPCError(.invalidArgument) { try await server.start() }
    }
}
