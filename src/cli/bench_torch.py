"""The preprocessing of `deepgate bench-gpu` done the way a Python anti-spoofing script does it in PyTorch on
the GPU: upload the camera frame, convert its colour with tensor ops, letterbox with F.interpolate (antialiased
bilinear) and pad, normalise; crop every face with F.affine_grid + F.grid_sample and normalise. Prints the
per-stage medians (ms, CUDA-synchronised wall time, as the runtime's figures are) as JSON.

Usage: python bench_torch.py WIDTH HEIGHT FORMAT FRAMES FACES QUALITY_SIDE CROP_SIDE
"""
import json
import math
import sys
import time

import torch
import torch.nn.functional as F


def main():
    width, height, fmt, frames, faces, quality_side, crop_side = sys.argv[1:8]
    width, height, frames, faces = int(width), int(height), int(frames), int(faces)
    quality_side, crop_side = int(quality_side), int(crop_side)
    device = torch.device("cuda")
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    sizes = {"YUYV": height * width * 2, "UYVY": height * width * 2, "NV12": height * width * 3 // 2,
             "RGB24": height * width * 3, "BGR24": height * width * 3, "GREY": height * width}
    if fmt not in sizes:
        sys.exit(f"unsupported format {fmt}")
    host = torch.randint(0, 256, (sizes[fmt],), dtype=torch.uint8).pin_memory()

    def to_rgb(raw):
        if fmt in ("YUYV", "UYVY"):
            packed = raw.view(height, width // 2, 4).float()
            y_at, u_at, v_at = ((0, 2), 1, 3) if fmt == "YUYV" else ((1, 3), 0, 2)
            y = torch.stack((packed[..., y_at[0]], packed[..., y_at[1]]), dim=-1).reshape(height, width)
            u = packed[..., u_at].repeat_interleave(2, dim=1)
            v = packed[..., v_at].repeat_interleave(2, dim=1)
        elif fmt == "NV12":
            y = raw[: height * width].view(height, width).float()
            uv = raw[height * width:].view(height // 2, width // 2, 2).float()
            u = uv[..., 0].repeat_interleave(2, 0).repeat_interleave(2, 1)
            v = uv[..., 1].repeat_interleave(2, 0).repeat_interleave(2, 1)
        else:
            pixels = raw.view(height, width, -1).float()
            if fmt == "GREY":
                return pixels.permute(2, 0, 1).expand(3, height, width).unsqueeze(0)
            rgb = pixels.permute(2, 0, 1).unsqueeze(0)
            return rgb.flip(1) if fmt == "BGR24" else rgb
        luma = 1.164383 * (y - 16.0)
        u, v = u - 128.0, v - 128.0
        rgb = torch.stack((luma + 1.596027 * v, luma - 0.391762 * u - 0.812968 * v, luma + 2.017232 * u))
        return rgb.clamp(0, 255).unsqueeze(0)

    side = 128
    scale = min(side / width, side / height)
    inner = (max(1, round(height * scale)), max(1, round(width * scale)))

    def letterbox(rgb):
        resized = F.interpolate(rgb, size=inner, mode="bilinear", antialias=True, align_corners=False)
        top, left = (side - inner[0]) // 2, (side - inner[1]) // 2
        padded = F.pad(resized, (left, side - inner[1] - left, top, side - inner[0] - top))
        return ((padded.round() / 255.0) - mean) / std

    # The same face placements as the runtime's bench: a third of the frame high, slightly rotated (the same
    # map serves both crop sizes: affine_grid works in normalised coordinates).
    def thetas():
        rows = []
        for index in range(faces):
            angle = 0.1 * index - 0.1
            box = height / 3.0
            cx, cy = width * (index + 1) / (faces + 1), height / 2.0
            # affine_grid works in normalised coordinates [-1, 1] of the input.
            sx, sy = box / width, box / height
            rows.append([[sx * math.cos(angle), -sx * math.sin(angle) * height / width, 2 * cx / width - 1],
                         [sy * math.sin(angle) * width / height, sy * math.cos(angle), 2 * cy / height - 1]])
        return torch.tensor(rows, device=device)

    theta_quality = theta_crop = thetas()

    def crops(rgb):
        batch = rgb.expand(faces, -1, -1, -1)
        grid = F.affine_grid(theta_quality, (faces, 3, quality_side, quality_side), align_corners=False)
        quality = F.grid_sample(batch, grid, mode="bilinear", align_corners=False).round().to(torch.uint8)
        grid = F.affine_grid(theta_crop, (faces, 3, crop_side, crop_side), align_corners=False)
        crop = F.grid_sample(batch, grid, mode="bilinear", align_corners=False)
        tensors = ((crop.round() / 255.0) - mean) / std
        return quality.cpu(), tensors.cpu()

    def timed(work):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = work()
        torch.cuda.synchronize()
        return result, (time.perf_counter() - start) * 1e3

    stages = {"upload": [], "letterbox": [], "crops": [], "total": []}
    for index in range(frames + 5):
        raw, upload = timed(lambda: host.to(device, non_blocking=True))
        rgb, convert = timed(lambda: to_rgb(raw))
        _, boxed = timed(lambda: letterbox(rgb).cpu())
        _, cropped = timed(lambda: crops(rgb))
        if index >= 5:
            stages["upload"].append(upload)
            stages["letterbox"].append(convert + boxed)
            stages["crops"].append(cropped)
            stages["total"].append(upload + convert + boxed + cropped)
    medians = {name: sorted(times)[len(times) // 2] for name, times in stages.items()}
    medians["torch"] = f"{torch.__version__} on {torch.cuda.get_device_name(0)}"
    print(json.dumps(medians))


if __name__ == "__main__":
    main()
