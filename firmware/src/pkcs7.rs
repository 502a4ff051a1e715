//! PKCS#7 `SignedData` verification for authenticated variables, as edk2's
//! `Pkcs7Verify` (CryptoPkg, OpenSSL) does it for AuthVariableLib, with
//! RustCrypto's `cms`, `x509-cert`, `rsa` and `sha2`:
//!
//! - The signature is a DER `SignedData`, with or without the `ContentInfo`
//!   wrapper (`1.2.840.113549.1.7.2`). edk2's AuthVariableLib refuses the
//!   wrapped form for time-based variables (it looks for the SHA-256 OID at
//!   byte 13, where only the bare form has it); OpenVMM accepts both, and so
//!   does efivmm: the signatures are the same.
//! - The content is detached: the caller gives its SHA-256 digest (UEFI's
//!   `VariableName || VendorGuid || Attributes || TimeStamp || Data`).
//! - Exactly one `SignerInfo`, digest SHA-256 (UEFI 2.10 §8.2.2: "Only a
//!   digest algorithm of SHA-256 is accepted"), signature RSA PKCS#1 v1.5
//!   (`rsaEncryption` or `sha256WithRSAEncryption`), RSA keys of 2048 to
//!   4096 bits (`rsa`'s limit). With signed attributes, the
//!   `messageDigest` attribute must be the content's digest and the
//!   signature is over the attributes' DER (`SET OF`); without, over the
//!   content.
//! - Trust, as OpenSSL with `X509_V_FLAG_PARTIAL_CHAIN` and no time check
//!   (edk2's settings): the signer's certificate is one of the trusted
//!   certificates, or a chain through the `SignedData`'s certificates
//!   leads from it to a certificate issued by a trusted one. Each link is
//!   an issuer/subject name match and an RSA PKCS#1 v1.5 signature with
//!   SHA-256, SHA-384 or SHA-512 over the `TBSCertificate` as it appears in
//!   the input. No validity periods, key usages or revocation are checked
//!   (nor does edk2).
//!
//! Bounded cost (a hostile caller controls all of the input): at most
//! [`MAX_SIGNATURE_SIZE`] bytes of signature, whose shape is checked before
//! it is decoded ([`MAX_TLVS`] values, at most [`MAX_CHILDREN`] in any one,
//! nested at most [`MAX_DEPTH`] deep), [`MAX_CERTIFICATES`]
//! certificates, chains of at most [`MAX_CHAIN`] links, and RSA public
//! exponents below 2^33 (`rsa`'s limit), and at most [`MAX_LINK_CHECKS`]
//! certificate signature checks, so one verification costs at most
//! `MAX_LINK_CHECKS + 1` RSA operations of at most 4096 bits (the worst
//! case is measured in `benches/sandbox.rs`).

use alloc::vec::Vec;

use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use der::asn1::ObjectIdentifier;
use der::{Decode, Encode, Reader, SliceReader};
use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use sha2::{Digest, Sha256, Sha384, Sha512};
use x509_cert::Certificate;

/// Largest `SignedData` accepted (a db update signed through a three-level
/// chain is about 5 KiB).
pub const MAX_SIGNATURE_SIZE: usize = 64 * 1024;
/// Most certificates a `SignedData` may carry.
pub const MAX_CERTIFICATES: usize = 16;
/// Most links of a chain from the signer to a trusted certificate.
pub const MAX_CHAIN: usize = 8;
/// Most TLVs (nested values) in a `SignedData`: a bound on everything
/// decoding does, before any of it runs.
pub const MAX_TLVS: usize = 4096;
/// Most values inside one constructed value. `der` sorts every `SET OF`
/// it decodes with an insertion sort (quadratic): a hostile `SET OF` of
/// ten thousand distinct values in reverse order would take seconds.
pub const MAX_CHILDREN: usize = 256;
/// Deepest nesting of constructed values.
pub const MAX_DEPTH: usize = 32;
/// Most RSA signature checks of certificates in one verification: a
/// hostile `SignedData` whose certificates all carry the same name would
/// otherwise cost `MAX_CHAIN * MAX_CERTIFICATES` of them.
pub const MAX_LINK_CHECKS: usize = 24;

const OID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_SHA256_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const OID_SHA384_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const OID_SHA512_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const OID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const OID_COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// Why a signature was not accepted. Every kind is
/// `EFI_SECURITY_VIOLATION` to the caller; the kinds exist for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Not DER, not a `SignedData`, or over a limit.
    Malformed,
    /// A well-formed signature of a kind efivmm does not verify (another
    /// digest, several signers, a key that is not RSA or too large).
    Unsupported,
    /// The signature does not match the content and the signer's key.
    BadSignature,
    /// The signature is good but no chain leads to a trusted certificate.
    Untrusted,
}

/// A certificate with the parts verification needs, from its DER.
pub struct Cert<'a> {
    /// The whole certificate, as given.
    pub der: &'a [u8],
    /// The `TBSCertificate`, as given (what the issuer signed).
    pub tbs: &'a [u8],
    /// The decoded certificate.
    pub cert: Certificate,
}

impl<'a> Cert<'a> {
    /// Parses one DER certificate (exactly, no trailing bytes).
    pub fn parse(der: &'a [u8]) -> Result<Self, Error> {
        let cert = Certificate::from_der(der).map_err(|_| Error::Malformed)?;
        let tbs = tbs_bytes(der).ok_or(Error::Malformed)?;
        Ok(Cert { der, tbs, cert })
    }

    fn subject(&self) -> Option<Vec<u8>> {
        self.cert.tbs_certificate.subject.to_der().ok()
    }

    fn issuer(&self) -> Option<Vec<u8>> {
        self.cert.tbs_certificate.issuer.to_der().ok()
    }

    /// The RSA public key (`Unsupported` if not RSA or over 4096 bits).
    pub fn rsa_key(&self) -> Result<RsaPublicKey, Error> {
        let spki = self.cert.tbs_certificate.subject_public_key_info.to_der().map_err(|_| Error::Malformed)?;
        RsaPublicKey::from_public_key_der(&spki).map_err(|_| Error::Unsupported)
    }

    /// The subject's first common name, as edk2's `X509GetCommonName`
    /// returns it (the string's bytes), or empty if there is none.
    pub fn common_name(&self) -> Vec<u8> {
        for rdn in self.cert.tbs_certificate.subject.0.iter() {
            for atv in rdn.0.iter() {
                if atv.oid == OID_COMMON_NAME {
                    return atv.value.value().to_vec();
                }
            }
        }
        Vec::new()
    }

    /// Whether `issuer` issued this certificate: names match and
    /// `issuer`'s key verifies this certificate's signature. A signature
    /// check spends one of `budget`; with none left, the answer is no.
    fn issued_by(&self, issuer: &Cert<'_>, budget: &mut usize) -> bool {
        let name = self.issuer();
        if name.is_none() || name != issuer.subject() || *budget == 0 {
            return false;
        }
        *budget -= 1;
        let Ok(key) = issuer.rsa_key() else { return false };
        let Some(signature) = self.cert.signature.as_bytes() else { return false };
        let alg = self.cert.signature_algorithm.oid;
        let ok = if alg == OID_SHA256_RSA {
            key.verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(self.tbs), signature)
        } else if alg == OID_SHA384_RSA {
            key.verify(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(self.tbs), signature)
        } else if alg == OID_SHA512_RSA {
            key.verify(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(self.tbs), signature)
        } else {
            return false;
        };
        ok.is_ok()
    }
}

/// The `TBSCertificate` TLV inside a certificate's outer `SEQUENCE`.
fn tbs_bytes(der: &[u8]) -> Option<&[u8]> {
    let reader = SliceReader::new(der).ok()?;
    let header = reader.peek_header().ok()?;
    if header.tag != der::Tag::Sequence {
        return None;
    }
    // Skip the outer header, then take the first element whole.
    let outer_len = der.len().checked_sub(usize::try_from(header.length).ok()?)?;
    let mut inner = SliceReader::new(der.get(outer_len..)?).ok()?;
    inner.tlv_bytes().ok()
}

/// Whether `der` is DER within the shape limits ([`MAX_TLVS`],
/// [`MAX_CHILDREN`], [`MAX_DEPTH`]), checked with `der`'s header decoding
/// alone, before anything is decoded.
pub fn shape_within_limits(der: &[u8]) -> bool {
    let mut tlvs = 0;
    shape_ok(der, 0, &mut tlvs)
}

/// Whether `der` is a sequence of definite-length TLVs within the shape
/// limits, counting them into `tlvs`.
fn shape_ok(der: &[u8], depth: usize, tlvs: &mut usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    let Ok(mut reader) = SliceReader::new(der) else { return false };
    let mut children = 0;
    while !reader.is_finished() {
        let Ok(header) = der::Header::decode(&mut reader) else { return false };
        let Ok(content) = reader.read_slice(header.length) else { return false };
        children += 1;
        *tlvs += 1;
        if children > MAX_CHILDREN || *tlvs > MAX_TLVS {
            return false;
        }
        if header.tag.is_constructed() && !shape_ok(content, depth + 1, tlvs) {
            return false;
        }
    }
    true
}

/// A parsed `SignedData` and its certificates (DER, re-encoded).
pub struct Signed {
    signed_data: SignedData,
    certs: Vec<Vec<u8>>,
}

impl Signed {
    /// Parses a `SignedData`, bare or in a `ContentInfo`.
    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        if input.len() > MAX_SIGNATURE_SIZE {
            return Err(Error::Malformed);
        }
        if !shape_within_limits(input) {
            return Err(Error::Malformed);
        }
        let signed_data = match ContentInfo::from_der(input) {
            Ok(ci) if ci.content_type == OID_SIGNED_DATA => {
                ci.content.decode_as::<SignedData>().map_err(|_| Error::Malformed)?
            }
            _ => SignedData::from_der(input).map_err(|_| Error::Malformed)?,
        };
        let mut certs = Vec::new();
        if let Some(set) = &signed_data.certificates {
            if set.0.len() > MAX_CERTIFICATES {
                return Err(Error::Malformed);
            }
            for choice in set.0.iter() {
                if let CertificateChoices::Certificate(c) = choice {
                    certs.push(c.to_der().map_err(|_| Error::Malformed)?);
                }
            }
        }
        Ok(Signed { signed_data, certs })
    }

    /// The one `SignerInfo` (`Unsupported` if there are several).
    fn signer_info(&self) -> Result<&SignerInfo, Error> {
        let infos = &self.signed_data.signer_infos.0;
        if infos.len() != 1 {
            return Err(if infos.is_empty() { Error::Malformed } else { Error::Unsupported });
        }
        infos.get(0).ok_or(Error::Malformed)
    }

    /// The certificates the `SignedData` carries, parsed.
    fn parsed_certs(&self) -> Result<Vec<Cert<'_>>, Error> {
        self.certs.iter().map(|d| Cert::parse(d)).collect()
    }

    /// Checks the signature over `content_digest` (SHA-256 of the detached
    /// content) and returns the index of the signer's certificate.
    fn check_signature(&self, certs: &[Cert<'_>], content_digest: &[u8; 32]) -> Result<usize, Error> {
        let info = self.signer_info()?;
        if info.digest_alg.oid != OID_SHA256 {
            return Err(Error::Unsupported);
        }
        let alg = info.signature_algorithm.oid;
        if alg != OID_RSA && alg != OID_SHA256_RSA {
            return Err(Error::Unsupported);
        }
        let signer = certs.iter().position(|c| identifies(&info.sid, c)).ok_or(Error::Untrusted)?;
        let key = certs.get(signer).ok_or(Error::Untrusted)?.rsa_key()?;
        let hashed: [u8; 32] = match &info.signed_attrs {
            None => *content_digest,
            Some(attrs) => {
                let digest = attrs
                    .iter()
                    .find(|a| a.oid == OID_MESSAGE_DIGEST)
                    .and_then(|a| a.values.get(0))
                    .and_then(|v| v.decode_as::<der::asn1::OctetString>().ok())
                    .ok_or(Error::Malformed)?;
                if digest.as_bytes() != content_digest {
                    return Err(Error::BadSignature);
                }
                // The signature covers the attributes as a DER SET OF.
                let encoded = attrs.to_der().map_err(|_| Error::Malformed)?;
                Sha256::digest(&encoded).into()
            }
        };
        key.verify(Pkcs1v15Sign::new::<Sha256>(), &hashed, info.signature.as_bytes())
            .map_err(|_| Error::BadSignature)?;
        Ok(signer)
    }

    /// Verifies the signature over `content_digest` and that the signer
    /// chains to one of `trusted` (DER certificates).
    pub fn verify(&self, content_digest: &[u8; 32], trusted: &[&[u8]]) -> Result<(), Error> {
        let certs = self.parsed_certs()?;
        let signer = self.check_signature(&certs, content_digest)?;
        let anchors: Vec<Cert<'_>> = trusted.iter().filter_map(|d| Cert::parse(d).ok()).collect();
        let mut budget = MAX_LINK_CHECKS;
        let mut current = signer;
        for _ in 0..MAX_CHAIN {
            let cert = certs.get(current).ok_or(Error::Untrusted)?;
            if anchors.iter().any(|a| a.der == cert.der || cert.issued_by(a, &mut budget)) {
                return Ok(());
            }
            // Up one link, through the SignedData's own certificates.
            match certs.iter().position(|c| c.der != cert.der && cert.issued_by(c, &mut budget)) {
                Some(next) => current = next,
                None => return Err(Error::Untrusted),
            }
        }
        Err(Error::Untrusted)
    }

    /// Verifies the signature over `content_digest` and the chain from the
    /// signer up to the top of its chain within the `SignedData` (edk2's
    /// `Pkcs7GetSigners`: the last certificate of the chain; each link's
    /// signature is checked on the way up, so this is also edk2's
    /// `Pkcs7Verify` against that top certificate), and returns what a
    /// private authenticated variable's binding is made of: trust there is
    /// the binding recorded at creation, not a key in the store.
    pub fn signer_and_top(&self, content_digest: &[u8; 32]) -> Result<SignerChain, Error> {
        let certs = self.parsed_certs()?;
        let signer = self.check_signature(&certs, content_digest)?;
        let mut budget = MAX_LINK_CHECKS;
        let mut current = signer;
        for _ in 0..MAX_CHAIN {
            let cert = certs.get(current).ok_or(Error::Untrusted)?;
            match certs.iter().position(|c| c.der != cert.der && cert.issued_by(c, &mut budget)) {
                Some(next) => current = next,
                None => break,
            }
        }
        let common_name = certs.get(signer).ok_or(Error::Untrusted)?.common_name();
        let top_tbs = certs.get(current).ok_or(Error::Untrusted)?.tbs.to_vec();
        Ok(SignerChain { common_name, top_tbs })
    }
}

/// The signer of a verified `SignedData` as a private authenticated
/// variable's binding needs it ([`Signed::signer_and_top`]).
pub struct SignerChain {
    /// The signer's first common name ([`Cert::common_name`]).
    pub common_name: Vec<u8>,
    /// The `TBSCertificate` of the top certificate of the signer's chain.
    pub top_tbs: Vec<u8>,
}

/// Whether `sid` names `cert` (issuer and serial number, or subject key
/// identifier).
fn identifies(sid: &SignerIdentifier, cert: &Cert<'_>) -> bool {
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(ias) => {
            ias.issuer == cert.cert.tbs_certificate.issuer
                && ias.serial_number == cert.cert.tbs_certificate.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => {
            let Some(exts) = &cert.cert.tbs_certificate.extensions else { return false };
            exts.iter().any(|e| {
                e.extn_id == ObjectIdentifier::new_unwrap("2.5.29.14")
                    && der::asn1::OctetString::from_der(e.extn_value.as_bytes())
                        .is_ok_and(|v| v.as_bytes() == ski.0.as_bytes())
            })
        }
    }
}
