internal import COpenSSL
internal import NIOCore

/// TLS settings for a server or a client.
///
/// ```swift
/// // A server that also requires client certificates signed by ca.pem (mutual TLS):
/// let tls = TLSConfiguration.server(certificateChain: "server.pem", privateKey: "server.key", clientCertificateAuthority: "ca.pem")
/// // A client that trusts ca.pem and checks that the server is "harpoon.internal":
/// let tls = TLSConfiguration.client(trustRoots: "ca.pem", serverHostname: "harpoon.internal")
/// ```
public struct TLSConfiguration: Sendable, Hashable {
    /// PEM file of our certificate and its chain (required for servers, optional for clients).
    public var certificateChainPath: String?
    /// PEM file of our private key.
    public var privateKeyPath: String?
    /// PEM file of the certificate authorities we trust; `nil` uses the system's (clients only).
    public var trustRootsPath: String?
    /// Servers: require and verify a client certificate. Clients: verify the server (on unless turned off for tests).
    public var verifyPeer: Bool
    /// Clients: the name the server's certificate must carry (and the SNI sent); `nil` uses the host connected to.
    public var serverHostname: String?

    public static func server(
        certificateChain: String, privateKey: String, clientCertificateAuthority: String? = nil
    ) -> Self {
        Self(
            certificateChainPath: certificateChain, privateKeyPath: privateKey,
            trustRootsPath: clientCertificateAuthority,
            verifyPeer: clientCertificateAuthority != nil, serverHostname: nil
        )
    }

    public static func client(
        trustRoots: String? = nil, serverHostname: String? = nil, certificateChain: String? = nil,
        privateKey: String? = nil
    ) -> Self {
        Self(
            certificateChainPath: certificateChain, privateKeyPath: privateKey, trustRootsPath: trustRoots,
            verifyPeer: true, serverHostname: serverHostname
        )
    }
}

/// An OpenSSL `SSL_CTX` built from a ``TLSConfiguration``, shared by every connection of a server or client.
final class TLSContext: @unchecked Sendable {
    enum Role { case server, client }

    let role: Role
    let configuration: TLSConfiguration
    fileprivate let context: OpaquePointer

    init(_ configuration: TLSConfiguration, role: Role) throws(RPCError) {
        guard let context = SSL_CTX_new(role == .server ? TLS_server_method() : TLS_client_method()) else {
            throw TLSContext.error("cannot create an SSL context")
        }
        self.context = context
        self.role = role
        self.configuration = configuration
        _ = shoal_ssl_ctx_set_min_tls12(context)
        if let chain = configuration.certificateChainPath {
            guard SSL_CTX_use_certificate_chain_file(context, chain) == 1 else {
                throw TLSContext.error("cannot load the certificate chain \(chain)")
            }
        }
        if let key = configuration.privateKeyPath {
            guard SSL_CTX_use_PrivateKey_file(context, key, SSL_FILETYPE_PEM) == 1 else {
                throw TLSContext.error("cannot load the private key \(key)")
            }
            guard SSL_CTX_check_private_key(context) == 1 else {
                throw TLSContext.error("the private key does not match the certificate")
            }
        }
        if role == .server, configuration.certificateChainPath == nil {
            throw RPCError(code: .invalidArgument, message: "TLS: a server needs a certificate chain and a private key")
        }
        if let roots = configuration.trustRootsPath {
            guard SSL_CTX_load_verify_locations(context, roots, nil) == 1 else {
                throw TLSContext.error("cannot load trust roots \(roots)")
            }
        } else if role == .client {
            SSL_CTX_set_default_verify_paths(context)
        }
        if configuration.verifyPeer {
            SSL_CTX_set_verify(context, SSL_VERIFY_PEER | (role == .server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), nil)
        }
        switch role {
        case .server: shoal_ssl_ctx_select_h2(context)
        case .client: _ = shoal_ssl_ctx_offer_h2(context)
        }
    }

    deinit { SSL_CTX_free(context) }

    /// The OpenSSL error queue as text, emptied.
    static func drainErrors() -> String {
        var messages: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            messages.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return messages.joined(separator: "; ")
    }

    static func error(_ what: String) -> RPCError {
        let detail = drainErrors()
        return RPCError(code: .invalidArgument, message: "TLS: \(what)" + (detail.isEmpty ? "" : " (\(detail))"))
    }
}

/// TLS over a NIO channel with OpenSSL and memory BIOs: ciphertext from the socket goes into one BIO, plaintext
/// comes out of `SSL_read`; plaintext written goes through `SSL_write` and the ciphertext from the other BIO goes to
/// the socket. Writes made before the handshake completes wait for it. ALPN must settle on `h2`.
final class TLSHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let tls: TLSContext
    private let ssl: OpaquePointer
    private let readBIO: OpaquePointer
    private let writeBIO: OpaquePointer
    private var handshakeDone = false
    private var failed = false
    private var pendingWrites: [(ByteBuffer, EventLoopPromise<Void>?)] = []

    init(context tls: TLSContext, serverHostname: String?) throws(RPCError) {
        self.tls = tls
        guard let ssl = SSL_new(tls.context), let readBIO = BIO_new(BIO_s_mem()), let writeBIO = BIO_new(BIO_s_mem())
        else {
            throw TLSContext.error("cannot create a session")
        }
        self.ssl = ssl
        self.readBIO = readBIO
        self.writeBIO = writeBIO
        SSL_set_bio(ssl, readBIO, writeBIO)  // the SSL owns both BIOs now
        switch tls.role {
        case .server:
            SSL_set_accept_state(ssl)
        case .client:
            SSL_set_connect_state(ssl)
            let hostname = tls.configuration.serverHostname ?? serverHostname
            if let hostname {
                // SNI for names only; the certificate check for names and addresses alike.
                if !hostname.allSatisfy({ $0.isNumber || $0 == "." || $0 == ":" }) {
                    _ = shoal_ssl_set_sni(ssl, hostname)
                }
                if tls.configuration.verifyPeer {
                    let isAddress =
                        hostname.allSatisfy { $0.isHexDigit || $0 == "." || $0 == ":" }
                        && hostname.contains(where: { $0 == "." || $0 == ":" })
                    if isAddress {
                        let param = SSL_get0_param(ssl)
                        X509_VERIFY_PARAM_set1_ip_asc(param, hostname)
                    } else {
                        SSL_set1_host(ssl, hostname)
                    }
                }
            }
        }
    }

    deinit { SSL_free(ssl) }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive, tls.role == .client { handshake(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        if tls.role == .client { handshake(context: context) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        let buffer = unwrapInboundIn(data)
        buffer.withUnsafeReadableBytes { bytes in
            _ = BIO_write(readBIO, bytes.baseAddress, Int32(bytes.count))
        }
        if !handshakeDone {
            handshake(context: context)
            guard handshakeDone else { return }
        }
        readPlaintext(context: context)
        flushCiphertext(context: context)
    }

    private func readPlaintext(context: ChannelHandlerContext) {
        var output = context.channel.allocator.buffer(capacity: 16 * 1024)
        while true {
            var error: Int32 = 0
            let count = output.writeWithUnsafeMutableBytes(minimumWritableBytes: 16 * 1024) { bytes -> Int in
                let count = SSL_read(ssl, bytes.baseAddress, Int32(clamping: bytes.count))
                if count > 0 { return Int(count) }
                error = SSL_get_error(ssl, count)
                return 0
            }
            if count > 0 { continue }
            if error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE { break }
            if error == SSL_ERROR_ZERO_RETURN {
                // close_notify: the peer is done.
                if output.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(output)) }
                context.close(promise: nil)
                return
            }
            fail(context: context, "TLS read failed: \(TLSContext.drainErrors())")
            return
        }
        if output.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(output)) }
    }

    private func handshake(context: ChannelHandlerContext) {
        guard !handshakeDone, !failed else { return }
        let result = SSL_do_handshake(ssl)
        flushCiphertext(context: context)
        if result == 1 {
            var protocolName: UnsafePointer<UInt8>?
            var length: UInt32 = 0
            SSL_get0_alpn_selected(ssl, &protocolName, &length)
            let alpn = protocolName.map {
                String(decoding: UnsafeBufferPointer(start: $0, count: Int(length)), as: UTF8.self)
            }
            guard alpn == "h2" else {
                fail(context: context, "the peer did not negotiate HTTP/2 with ALPN (got \(alpn ?? "nothing"))")
                return
            }
            handshakeDone = true
            let writes = pendingWrites
            pendingWrites = []
            for (buffer, promise) in writes { encrypt(buffer, promise: promise, context: context) }
            flushCiphertext(context: context)
            return
        }
        let error = SSL_get_error(ssl, result)
        if error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE { return }
        var detail = TLSContext.drainErrors()
        let verify = SSL_get_verify_result(ssl)
        if verify != X509_V_OK, let text = X509_verify_cert_error_string(verify) {
            detail += " (certificate: \(String(cString: text)))"
        }
        fail(context: context, "TLS handshake failed: \(detail)")
    }

    private func fail(context: ChannelHandlerContext, _ message: String) {
        guard !failed else { return }
        failed = true
        flushCiphertext(context: context)  // an alert, if OpenSSL queued one
        let error = RPCError(code: .unavailable, message: message)
        for (_, promise) in pendingWrites { promise?.fail(error) }
        pendingWrites = []
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let buffer = unwrapOutboundIn(data)
        guard !failed else {
            promise?.fail(RPCError(code: .unavailable, message: "TLS failed"))
            return
        }
        guard handshakeDone else {
            pendingWrites.append((buffer, promise))
            return
        }
        encrypt(buffer, promise: promise, context: context)
    }

    func flush(context: ChannelHandlerContext) {
        flushCiphertext(context: context)
    }

    private func encrypt(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?, context: ChannelHandlerContext) {
        let ok = buffer.withUnsafeReadableBytes { bytes -> Bool in
            guard bytes.count > 0 else { return true }
            return SSL_write(ssl, bytes.baseAddress, Int32(bytes.count)) > 0  // memory BIOs take everything
        }
        if ok {
            writeCiphertext(context: context, promise: promise)
        } else {
            promise?.fail(RPCError(code: .unavailable, message: "TLS write failed: \(TLSContext.drainErrors())"))
        }
    }

    /// Moves what OpenSSL has produced to the socket.
    private func writeCiphertext(context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        let pending = shoal_bio_pending(writeBIO)
        guard pending > 0 else {
            promise?.succeed(())
            return
        }
        var output = context.channel.allocator.buffer(capacity: Int(pending))
        output.writeWithUnsafeMutableBytes(minimumWritableBytes: Int(pending)) { bytes in
            Int(max(0, BIO_read(writeBIO, bytes.baseAddress, Int32(pending))))
        }
        context.write(wrapOutboundOut(output), promise: promise)
    }

    private func flushCiphertext(context: ChannelHandlerContext) {
        writeCiphertext(context: context, promise: nil)
        context.flush()
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if handshakeDone, !failed, mode == .all {
            _ = SSL_shutdown(ssl)  // close_notify
            flushCiphertext(context: context)
        }
        context.close(mode: mode, promise: promise)
    }
}
