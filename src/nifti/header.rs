//! The binary layouts of the NIfTI-1 (348-byte) and NIfTI-2 (540-byte) headers, in either byte
//! order: decoding into a [`Header`] (with its raw dimensions and data offset) and encoding one.
//!
//! Field offsets are those of `nifti1.h` and `nifti2.h`.

use super::{ByteOrder, DataType, Header, Version};

/// Size of a NIfTI-1 header in bytes.
pub(crate) const N1_SIZE: usize = 348;
/// Size of a NIfTI-2 header in bytes.
pub(crate) const N2_SIZE: usize = 540;

/// What a header says besides the [`Header`] fields: the raw `dim` array, the datatype code,
/// the offset of the voxel data, the magic (single file or header/image pair).
pub(crate) struct Raw {
    pub header: Header,
    pub dim: [i64; 8],
    pub datatype_code: i32,
    pub vox_offset: f64,
    /// `n+1` / `n+2`: voxels follow the header in the same file; otherwise `ni1` / `ni2`, a
    /// `.hdr` + `.img` pair.
    pub single_file: bool,
}

/// The version and byte order that a header's first four bytes (`sizeof_hdr`) announce.
pub(crate) fn detect(first4: [u8; 4]) -> Option<(Version, ByteOrder)> {
    let le = i32::from_le_bytes(first4);
    let be = i32::from_be_bytes(first4);
    match (le, be) {
        (348, _) => Some((Version::Nifti1, ByteOrder::Little)),
        (_, 348) => Some((Version::Nifti1, ByteOrder::Big)),
        (540, _) => Some((Version::Nifti2, ByteOrder::Little)),
        (_, 540) => Some((Version::Nifti2, ByteOrder::Big)),
        _ => None,
    }
}

struct Reader<'a> {
    b: &'a [u8],
    order: ByteOrder,
}

impl Reader<'_> {
    fn arr<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.b[at..at + N]);
        if self.order == ByteOrder::Big {
            a.reverse();
        }
        a
    }
    fn i16(&self, at: usize) -> i16 {
        i16::from_le_bytes(self.arr(at))
    }
    fn i32(&self, at: usize) -> i32 {
        i32::from_le_bytes(self.arr(at))
    }
    fn i64(&self, at: usize) -> i64 {
        i64::from_le_bytes(self.arr(at))
    }
    fn f32(&self, at: usize) -> f64 {
        f32::from_le_bytes(self.arr(at)) as f64
    }
    fn f64(&self, at: usize) -> f64 {
        f64::from_le_bytes(self.arr(at))
    }
    fn str(&self, at: usize, len: usize) -> String {
        let s = &self.b[at..at + len];
        let end = s.iter().position(|&c| c == 0).unwrap_or(len);
        String::from_utf8_lossy(&s[..end]).into_owned()
    }
}

/// Decodes a header. `bytes` holds at least [`N1_SIZE`] or [`N2_SIZE`] bytes as `version`
/// requires. Errors are messages (the caller adds the file name).
pub(crate) fn decode(bytes: &[u8], version: Version, order: ByteOrder) -> Result<Raw, String> {
    let r = Reader { b: bytes, order };
    let mut h = Header::blank();
    h.version = version;
    h.byte_order = order;
    let mut dim = [0i64; 8];
    let datatype_code;
    let vox_offset;
    let single_file;
    match version {
        Version::Nifti1 => {
            let magic = &bytes[344..348];
            single_file = match magic {
                b"n+1\0" => true,
                b"ni1\0" => false,
                _ => {
                    return Err(format!(
                        "bad magic {:?} (a NIfTI-1 header has \"n+1\" or \"ni1\")",
                        String::from_utf8_lossy(magic)
                    ))
                }
            };
            h.dim_info = bytes[39];
            for (i, d) in dim.iter_mut().enumerate() {
                *d = r.i16(40 + 2 * i) as i64;
            }
            h.intent_p = [r.f32(56), r.f32(60), r.f32(64)];
            h.intent_code = r.i16(68) as i32;
            datatype_code = r.i16(70) as i32;
            h.slice_start = r.i16(74) as i64;
            for i in 0..8 {
                h.pixdim[i] = r.f32(76 + 4 * i);
            }
            vox_offset = r.f32(108);
            h.scl_slope = r.f32(112);
            h.scl_inter = r.f32(116);
            h.slice_end = r.i16(120) as i64;
            h.slice_code = bytes[122] as i32;
            h.xyzt_units = bytes[123] as i32;
            h.cal_max = r.f32(124);
            h.cal_min = r.f32(128);
            h.slice_duration = r.f32(132);
            h.toffset = r.f32(136);
            h.descrip = r.str(148, 80);
            h.aux_file = r.str(228, 24);
            h.qform_code = r.i16(252) as i32;
            h.sform_code = r.i16(254) as i32;
            h.quatern = [r.f32(256), r.f32(260), r.f32(264)];
            h.qoffset = [r.f32(268), r.f32(272), r.f32(276)];
            for row in 0..3 {
                for c in 0..4 {
                    h.srow[row][c] = r.f32(280 + 16 * row + 4 * c);
                }
            }
            h.intent_name = r.str(328, 16);
        }
        Version::Nifti2 => {
            let magic = &bytes[4..12];
            single_file = match magic {
                b"n+2\0\r\n\x1a\n" => true,
                b"ni2\0\r\n\x1a\n" => false,
                _ => {
                    return Err(format!(
                    "bad magic {:?} (a NIfTI-2 header has \"n+2\\0\\r\\n\\x1a\\n\" or \"ni2...\")",
                    String::from_utf8_lossy(magic)
                ))
                }
            };
            datatype_code = r.i16(12) as i32;
            for (i, d) in dim.iter_mut().enumerate() {
                *d = r.i64(16 + 8 * i);
            }
            h.intent_p = [r.f64(80), r.f64(88), r.f64(96)];
            for i in 0..8 {
                h.pixdim[i] = r.f64(104 + 8 * i);
            }
            let off = r.i64(168);
            vox_offset = off as f64;
            h.scl_slope = r.f64(176);
            h.scl_inter = r.f64(184);
            h.cal_max = r.f64(192);
            h.cal_min = r.f64(200);
            h.slice_duration = r.f64(208);
            h.toffset = r.f64(216);
            h.slice_start = r.i64(224);
            h.slice_end = r.i64(232);
            h.descrip = r.str(240, 80);
            h.aux_file = r.str(320, 24);
            h.qform_code = r.i32(344);
            h.sform_code = r.i32(348);
            h.quatern = [r.f64(352), r.f64(360), r.f64(368)];
            h.qoffset = [r.f64(376), r.f64(384), r.f64(392)];
            for row in 0..3 {
                for c in 0..4 {
                    h.srow[row][c] = r.f64(400 + 32 * row + 8 * c);
                }
            }
            h.slice_code = r.i32(496);
            h.xyzt_units = r.i32(500);
            h.intent_code = r.i32(504);
            h.intent_name = r.str(508, 16);
            h.dim_info = bytes[524];
        }
    }
    if let Some(dt) = DataType::from_code(datatype_code) {
        h.datatype = dt;
    }
    Ok(Raw {
        header: h,
        dim,
        datatype_code,
        vox_offset,
        single_file,
    })
}

struct Writer {
    b: Vec<u8>,
    order: ByteOrder,
}

impl Writer {
    fn put(&mut self, at: usize, le: &[u8]) {
        let dst = &mut self.b[at..at + le.len()];
        dst.copy_from_slice(le);
        if self.order == ByteOrder::Big {
            dst.reverse();
        }
    }
    fn i16(&mut self, at: usize, v: i64) {
        self.put(
            at,
            &(v.clamp(i16::MIN as i64, i16::MAX as i64) as i16).to_le_bytes(),
        )
    }
    fn i32(&mut self, at: usize, v: i64) {
        self.put(
            at,
            &(v.clamp(i32::MIN as i64, i32::MAX as i64) as i32).to_le_bytes(),
        )
    }
    fn i64(&mut self, at: usize, v: i64) {
        self.put(at, &v.to_le_bytes())
    }
    fn f32(&mut self, at: usize, v: f64) {
        self.put(at, &(v as f32).to_le_bytes())
    }
    fn f64(&mut self, at: usize, v: f64) {
        self.put(at, &v.to_le_bytes())
    }
    fn u8(&mut self, at: usize, v: i64) {
        self.b[at] = v.clamp(0, 255) as u8;
    }
    fn str(&mut self, at: usize, len: usize, s: &str) {
        // At most len - 1 bytes, cut on a character boundary, NUL-padded.
        let mut n = s.len().min(len - 1);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.b[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
    }
}

/// Encodes `h` as a single-file header (`n+1` / `n+2`) for voxels of `dim`, stored as
/// `datatype` with the given scaling, followed by the 4-byte extension flag (no extensions):
/// the voxels start right after the returned bytes.
pub(crate) fn encode(
    h: &Header,
    dim: &[usize],
    datatype: DataType,
    slope: f64,
    inter: f64,
) -> Vec<u8> {
    let mut d = [1i64; 8];
    d[0] = dim.len() as i64;
    for (i, &n) in dim.iter().enumerate() {
        d[i + 1] = n as i64;
    }
    let size = match h.version {
        Version::Nifti1 => N1_SIZE,
        Version::Nifti2 => N2_SIZE,
    };
    let mut w = Writer {
        b: vec![0u8; size + 4],
        order: h.byte_order,
    };
    let vox_offset = (size + 4) as i64;
    let bitpix = (datatype.size() * 8) as i64;
    match h.version {
        Version::Nifti1 => {
            w.i32(0, N1_SIZE as i64);
            w.b[38] = b'r'; // "regular", as nibabel and the reference library write
            w.b[39] = h.dim_info;
            for (i, &v) in d.iter().enumerate() {
                w.i16(40 + 2 * i, v);
            }
            for (i, &v) in h.intent_p.iter().enumerate() {
                w.f32(56 + 4 * i, v);
            }
            w.i16(68, h.intent_code as i64);
            w.i16(70, datatype.code() as i64);
            w.i16(72, bitpix);
            w.i16(74, h.slice_start);
            for (i, &v) in h.pixdim.iter().enumerate() {
                w.f32(76 + 4 * i, v);
            }
            w.f32(108, vox_offset as f64);
            w.f32(112, slope);
            w.f32(116, inter);
            w.i16(120, h.slice_end);
            w.u8(122, h.slice_code as i64);
            w.u8(123, h.xyzt_units as i64);
            w.f32(124, h.cal_max);
            w.f32(128, h.cal_min);
            w.f32(132, h.slice_duration);
            w.f32(136, h.toffset);
            w.str(148, 80, &h.descrip);
            w.str(228, 24, &h.aux_file);
            w.i16(252, h.qform_code as i64);
            w.i16(254, h.sform_code as i64);
            for i in 0..3 {
                w.f32(256 + 4 * i, h.quatern[i]);
                w.f32(268 + 4 * i, h.qoffset[i]);
            }
            for row in 0..3 {
                for c in 0..4 {
                    w.f32(280 + 16 * row + 4 * c, h.srow[row][c]);
                }
            }
            w.str(328, 16, &h.intent_name);
            w.b[344..348].copy_from_slice(b"n+1\0");
        }
        Version::Nifti2 => {
            w.i32(0, N2_SIZE as i64);
            w.b[4..12].copy_from_slice(b"n+2\0\r\n\x1a\n");
            w.i16(12, datatype.code() as i64);
            w.i16(14, bitpix);
            for (i, &v) in d.iter().enumerate() {
                w.i64(16 + 8 * i, v);
            }
            for (i, &v) in h.intent_p.iter().enumerate() {
                w.f64(80 + 8 * i, v);
            }
            for (i, &v) in h.pixdim.iter().enumerate() {
                w.f64(104 + 8 * i, v);
            }
            w.i64(168, vox_offset);
            w.f64(176, slope);
            w.f64(184, inter);
            w.f64(192, h.cal_max);
            w.f64(200, h.cal_min);
            w.f64(208, h.slice_duration);
            w.f64(216, h.toffset);
            w.i64(224, h.slice_start);
            w.i64(232, h.slice_end);
            w.str(240, 80, &h.descrip);
            w.str(320, 24, &h.aux_file);
            w.i32(344, h.qform_code as i64);
            w.i32(348, h.sform_code as i64);
            for i in 0..3 {
                w.f64(352 + 8 * i, h.quatern[i]);
                w.f64(376 + 8 * i, h.qoffset[i]);
            }
            for row in 0..3 {
                for c in 0..4 {
                    w.f64(400 + 32 * row + 8 * c, h.srow[row][c]);
                }
            }
            w.i32(496, h.slice_code as i64);
            w.i32(500, h.xyzt_units as i64);
            w.i32(504, h.intent_code as i64);
            w.str(508, 16, &h.intent_name);
            w.b[524] = h.dim_info;
        }
    }
    w.b
}
