#!/usr/bin/env python3
"""Regenerates testdata/corpus/*.eml (the files are committed; this script
documents how they were made). Run from anywhere: python3 gen_corpus.py"""
import base64, io, zipfile, os, quopri
here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, 'corpus')
MZ = b'MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00' + b'\xb8' + b'\x00'*47 + b'\x0e\x1f\xba\x0e\x00\xb4\t\xcd!\xb8\x01L\xcd!This program cannot be run in DOS mode.\r\r\n$' + bytes(range(256))*4
def b64(data, width=76):
    s = base64.b64encode(data).decode()
    return '\r\n'.join(s[i:i+width] for i in range(0, len(s), width))
def write(name, text, nl='\r\n', enc='utf-8'):
    data = text if isinstance(text, bytes) else text.encode(enc)
    data = data.replace(b'\r\n', b'\n')
    if nl == '\r\n':
        data = data.replace(b'\n', b'\r\n')
    open(os.path.join(out, name), 'wb').write(data)
def mkzip(files, encrypt=False):
    bio = io.BytesIO()
    with zipfile.ZipFile(bio, 'w', zipfile.ZIP_DEFLATED) as z:
        for n, d in files:
            zi = zipfile.ZipInfo(n, date_time=(2024, 3, 5, 10, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, d)
    return bio.getvalue()

HDR = """Return-Path: <alice@example.org>
Received: from mx.example.org (mx.example.org [192.0.2.1])
\tby mail.example.com with ESMTPS id 4XyZ; Tue, 5 Mar 2024 10:00:00 +0100
From: Alice Example <alice@example.org>
To: Bob <bob@example.com>
Date: Tue, 5 Mar 2024 10:00:00 +0100
Message-ID: <%s@example.org>
Subject: %s
MIME-Version: 1.0
"""

write('01_alternative.eml', HDR % ('alt1', 'Lunch?') + """Content-Type: multipart/alternative;
 boundary="----=_NextPart_000_0001_01DA6F00.12345678"

This is a multi-part message in MIME format.

------=_NextPart_000_0001_01DA6F00.12345678
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

Shall we have lunch at 12? =E2=98=95
------=_NextPart_000_0001_01DA6F00.12345678
Content-Type: text/html; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

<html><body><p>Shall we have lunch at 12? =E2=98=95</p></body></html>
------=_NextPart_000_0001_01DA6F00.12345678--
""")

write('02_mixed_double_ext.eml', HDR % ('mix2', 'Your invoice') + """Content-Type: multipart/mixed; boundary="b1_8f3a"

--b1_8f3a
Content-Type: multipart/alternative; boundary="b2_8f3a"

--b2_8f3a
Content-Type: text/plain; charset=us-ascii

Please find your invoice attached.
--b2_8f3a
Content-Type: text/html; charset=us-ascii

<p>Please find your invoice attached.</p>
--b2_8f3a--

--b1_8f3a
Content-Type: application/octet-stream; name="invoice.pdf.exe"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="invoice.pdf.exe"

""" + b64(MZ) + """
--b1_8f3a
Content-Type: application/pdf; name="terms.pdf"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="terms.pdf"

""" + b64(b'%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n') + """
--b1_8f3a--
""")

inner = """From: Carol <carol@example.net>
To: Alice <alice@example.org>
Subject: the tool
Date: Mon, 4 Mar 2024 09:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="inner-7d1"

--inner-7d1
Content-Type: text/plain; charset=utf-8

Here is the tool you asked for.
--inner-7d1
Content-Type: application/x-msdownload; name="setup.scr"
Content-Disposition: attachment; filename="setup.scr"
Content-Transfer-Encoding: base64

""" + b64(MZ) + """
--inner-7d1--
"""
write('03_forward_rfc822.eml', HDR % ('fwd3', 'Fwd: the tool') + """Content-Type: multipart/mixed; boundary="outer-7d1"

--outer-7d1
Content-Type: text/plain; charset=utf-8

See the forwarded message.
--outer-7d1
Content-Type: message/rfc822
Content-Disposition: attachment; filename="the tool.eml"

""" + inner + """
--outer-7d1--
""")

write('04_signed.eml', HDR % ('sig4', 'Signed with attachment') + """Content-Type: multipart/signed; protocol="application/pkcs7-signature";
 micalg=sha-256; boundary="----sig-boundary-42"

This is an S/MIME signed message

------sig-boundary-42
Content-Type: multipart/mixed; boundary="----mixed-boundary-42"

------mixed-boundary-42
Content-Type: text/plain; charset=utf-8

Signed text.

------mixed-boundary-42
Content-Type: application/octet-stream; name=TOOL.EXE
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename=TOOL.EXE

""" + b64(MZ[:120]) + """

------mixed-boundary-42--

------sig-boundary-42
Content-Type: application/pkcs7-signature; name="smime.p7s"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="smime.p7s"

""" + b64(bytes(range(200))) + """

------sig-boundary-42--
""")

write('05_signed_clean.eml', HDR % ('sig5', 'Signed') + """Content-Type: multipart/signed; protocol="application/pgp-signature";
 micalg=pgp-sha256; boundary="pgp-xyz"

--pgp-xyz
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 7bit

Nothing to see.
--pgp-xyz
Content-Type: application/pgp-signature; name="signature.asc"
Content-Disposition: attachment; filename="signature.asc"

-----BEGIN PGP SIGNATURE-----

iHUEARYIAB0WIQQ=
=abcd
-----END PGP SIGNATURE-----
--pgp-xyz--
""")

latin = (HDR % ('lat6', '=?iso-8859-1?Q?Rechnung_f=FCr_M=E4rz?=') + """Content-Type: multipart/mixed; boundary="=_latin_=" 

--=_latin_=
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: 8bit

Sehr geehrte Damen und Herren, anbei die Rechnung für März.
--=_latin_=
Content-Type: application/octet-stream; name="=?iso-8859-1?Q?Rechnung_M=E4rz.pdf.exe?="
Content-Disposition: attachment; filename="=?iso-8859-1?Q?Rechnung_M=E4rz.pdf.exe?="
Content-Transfer-Encoding: base64

""" + b64(MZ[:100]) + """
--=_latin_=
Content-Type: text/plain; charset=iso-8859-1; name="Übersicht.txt"
Content-Disposition: attachment; filename="Übersicht.txt"
Content-Transfer-Encoding: 8bit

Übersicht über alle Größen.
--=_latin_=--
""")
write('06_latin1.eml', latin, enc='latin-1')

sj_name = '請求書.exe'.encode('shift_jis')
sj_pct = ''.join('%%%02X' % c for c in sj_name)
sj = (HDR % ('sj7', '=?ISO-2022-JP?B?GyRCNEE7eiUtJW0lPyUkJUgbKEI=?=')).encode() + b"""Content-Type: multipart/mixed; boundary="sjis-b"

--sjis-b
Content-Type: text/plain; charset=Shift_JIS
Content-Transfer-Encoding: 8bit

""" + '請求書を送付します。'.encode('shift_jis') + b"""
--sjis-b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename*=shift_jis''""" + sj_pct.encode() + b"""
Content-Transfer-Encoding: base64

""" + b64(MZ[:90]).encode() + b"""
--sjis-b
Content-Type: text/plain; name=\"""" + '資料.txt'.encode('shift_jis') + b"""\"
Content-Transfer-Encoding: 8bit

""" + '資料です'.encode('shift_jis') + b"""
--sjis-b--
"""
write('07_shift_jis.eml', sj)

write('08_missing_final_boundary.eml', HDR % ('mfb8', 'truncated') + """Content-Type: multipart/mixed; boundary="trunc"

--trunc
Content-Type: text/plain

Body text.
--trunc
Content-Type: application/octet-stream; name="payload.exe"
Content-Transfer-Encoding: base64

""" + b64(MZ[:300]) + "\n")

write('09_lf_only.eml', HDR % ('lf9', 'LF only') + """Content-Type: multipart/mixed; boundary="lf-only"

--lf-only
Content-Type: text/plain; charset=utf-8

Unix line endings throughout.
--lf-only
Content-Type: application/x-javascript; name="run.js"
Content-Disposition: attachment; filename="run.js"

WScript.Echo("hi");
--lf-only--
""", nl='\n')

write('10_8bit.eml', HDR % ('8b10', '8bit') + """Content-Type: multipart/mixed; boundary="8bit-b"

--8bit-b
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Grüße aus Köln — ☃ and 日本語 in raw 8-bit UTF-8.
--8bit-b
Content-Type: application/octet-stream; name="screensaver.scr"
Content-Disposition: attachment; filename="screensaver.scr"
Content-Transfer-Encoding: quoted-printable

MZ=90=00=03=00=00=00 binary-ish qp
--8bit-b--
""")

cont = "filename*0*=utf-8''%C3%9Cberweisung%202024; filename*1*=%20Q1.pdf; filename*2=.exe"
write('11_rfc2231_continuations.eml', HDR % ('r11', 'RFC 2231') + """Content-Type: multipart/mixed; boundary="r2231"

--r2231
Content-Type: text/plain

see attachment
--r2231
Content-Type: application/octet-stream
Content-Disposition: attachment;
 """ + cont.replace('; ', ';\n ') + """
Content-Transfer-Encoding: base64

""" + b64(MZ[:64]) + """
--r2231--
""")

write('12_rfc2047_name.eml', HDR % ('r12', 'RFC 2047') + """Content-Type: multipart/mixed; boundary="r2047"

--r2047
Content-Type: text/plain

see attachment
--r2047
Content-Type: application/octet-stream; name="=?UTF-8?B?ZGllIFJlY2hudW5nLmV4ZQ==?="
Content-Disposition: attachment; filename="=?UTF-8?B?ZGllIFJlY2hudW5nLmV4ZQ==?="
Content-Transfer-Encoding: base64

""" + b64(MZ[:64]) + """
--r2047--
""")

write('13_rtl_override.eml', HDR % ('rtl13', 'Invoice') + """Content-Type: multipart/mixed; boundary="rtl"

--rtl
Content-Type: text/plain

Invoice attached.
--rtl
Content-Type: application/pdf; name="invoice\u202efdp.exe"
Content-Disposition: attachment; filename="invoice\u202efdp.exe"
Content-Transfer-Encoding: base64

""" + b64(MZ[:64]) + """
--rtl--
""")

write('14_trailing_dots_case.eml', HDR % ('td14', 'setup') + """Content-Type: multipart/mixed; boundary="td"

--td
Content-Type: text/plain

two files
--td
Content-Type: application/octet-stream; name="SETUP.EXE"
Content-Transfer-Encoding: base64

""" + b64(MZ[:64]) + """
--td
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="report.pdf.exe. . "
Content-Transfer-Encoding: base64

""" + b64(MZ[:64]) + """
--td--
""")

z_exe = mkzip([('readme.txt', b'read me'), ('bin/evil.exe', MZ)])
write('15_zip_with_exe.eml', HDR % ('z15', 'zip') + """Content-Type: multipart/mixed; boundary="zip1"

--zip1
Content-Type: text/plain

archive attached
--zip1
Content-Type: application/zip; name="files.zip"
Content-Disposition: attachment; filename="files.zip"
Content-Transfer-Encoding: base64

""" + b64(z_exe) + """
--zip1--
""")

inner_zip = mkzip([('payload.js', b'WScript.Echo(1)')])
outer_zip = mkzip([('docs/notes.txt', b'notes'), ('docs/more.zip', inner_zip)])
write('16_nested_zip.eml', HDR % ('z16', 'nested zip') + """Content-Type: multipart/mixed; boundary="zip2"

--zip2
Content-Type: text/plain

nested archive attached
--zip2
Content-Type: application/octet-stream; name="bundle.dat"
Content-Disposition: attachment; filename="bundle.dat"
Content-Transfer-Encoding: base64

""" + b64(outer_zip) + """
--zip2--
""")

enc = open(os.path.join(here, 'zip', 'encrypted.zip'), 'rb').read()  # zip -P secret encrypted.zip doc.txt
write('17_encrypted_zip.eml', HDR % ('z17', 'password 1234') + """Content-Type: multipart/mixed; boundary="zip3"

--zip3
Content-Type: text/plain

The password is 1234.
--zip3
Content-Type: application/zip; name="secret.zip"
Content-Disposition: attachment; filename="secret.zip"
Content-Transfer-Encoding: base64

""" + b64(enc) + """
--zip3--
""")

write('18_txt_is_exe.eml', HDR % ('t18', 'readme') + """Content-Type: multipart/mixed; boundary="lie"

--lie
Content-Type: text/plain

see readme
--lie
Content-Type: text/plain; name="readme.txt"
Content-Disposition: attachment; filename="readme.txt"
Content-Transfer-Encoding: base64

""" + b64(MZ) + """
--lie--
""")

write('19_preamble_epilogue.eml', HDR % ('pe19', 'boundary-like lines') + """Content-Type: multipart/mixed; boundary="abc"

This is the preamble.
--abc is mentioned here but is not a delimiter
--abcd
--ab
--abc

Part one has no header at all.
--abc-- not a close delimiter either
--
----abc
--abc
Content-Type: text/plain

Part two.
--abc--
This is the epilogue.
--abc
More epilogue.
""")

write('20_plain_text.eml', HDR % ('p20', 'plain') + """Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Just text. Grüße.
""")

write('21_single_part_exe.eml', HDR % ('s21', 'bare exe') + """Content-Type: application/x-msdownload; name="update.exe"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="update.exe"

""" + b64(MZ) + "\n")

enc_msg = inner.replace('\n', '\r\n').encode()
write('22_encoded_rfc822.eml', HDR % ('e22', 'encoded forward') + """Content-Type: multipart/mixed; boundary="encfwd"

--encfwd
Content-Type: text/plain

forwarded as base64
--encfwd
Content-Type: message/rfc822; name="fwd.eml"
Content-Transfer-Encoding: base64

""" + b64(enc_msg) + """
--encfwd--
""")

write('23_reject_hta.eml', HDR % ('h23', 'hta') + """Content-Type: multipart/mixed; boundary="hta"

--hta
Content-Type: text/plain

open me
--hta
Content-Type: application/hta; name="open.hta"

<script>alert(1)</script>
--hta--
""")

write('24_duplicate_disposition.eml', HDR % ('d24', 'dups') + """Content-Type: multipart/mixed; boundary="dup"

--dup
Content-Type: text/plain

two dispositions
--dup
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="harmless.txt"
Content-Disposition: attachment; filename="evil.bat"

@echo off
--dup--
""")

write('25_digest.eml', HDR % ('dg25', 'digest') + """Content-Type: multipart/digest; boundary="dig"

--dig

From: x@example.org
Subject: first
Content-Type: multipart/mixed; boundary="dm"

--dm
Content-Type: text/plain

digest item
--dm
Content-Type: application/octet-stream; name="item.cmd"

echo hi
--dm--

--dig

From: y@example.org
Subject: second

plain digest item
--dig--
""")

write('26_clean_attachments.eml', HDR % ('c26', 'photos') + """Content-Type: multipart/mixed; boundary="clean"

--clean
Content-Type: text/plain; charset=utf-8; format=flowed

Photos from the trip.
--clean
Content-Type: image/png; name="a.png"
Content-Disposition: attachment; filename="a.png"
Content-Transfer-Encoding: base64

""" + b64(b'\x89PNG\r\n\x1a\n' + bytes(100)) + """
--clean
Content-Type: application/zip; name="docs.zip"
Content-Disposition: attachment; filename="docs.zip"
Content-Transfer-Encoding: base64

""" + b64(mkzip([('a.txt', b'a'), ('b/c.pdf', b'%PDF-1.4')])) + """
--clean--
""")
