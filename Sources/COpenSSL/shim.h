#ifndef SHOAL_COPENSSL_SHIM_H
#define SHOAL_COPENSSL_SHIM_H
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

// OpenSSL macros, as functions Swift can call.
static inline int shoal_ssl_ctx_set_min_tls12(SSL_CTX *ctx) {
    return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
}

static inline int shoal_ssl_set_sni(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

static inline long shoal_bio_pending(BIO *bio) {
    return (long)BIO_ctrl_pending(bio);
}

// ALPN on the server: choose h2 if the client offers it, else refuse the handshake.
static inline int shoal_alpn_select_h2(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                                       const unsigned char *in, unsigned int inlen, void *arg) {
    static const unsigned char h2[] = {2, 'h', '2'};
    (void)ssl; (void)arg;
    if (SSL_select_next_proto((unsigned char **)out, outlen, h2, sizeof(h2), in, inlen) == OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static inline void shoal_ssl_ctx_select_h2(SSL_CTX *ctx) {
    SSL_CTX_set_alpn_select_cb(ctx, shoal_alpn_select_h2, NULL);
}

static inline int shoal_ssl_ctx_offer_h2(SSL_CTX *ctx) {
    static const unsigned char h2[] = {2, 'h', '2'};
    return SSL_CTX_set_alpn_protos(ctx, h2, sizeof(h2));
}
#endif
