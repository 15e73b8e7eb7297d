"""Per-task system prompts in the style of LAMM's Vicuna conversations (our own wording)."""
from __future__ import annotations

_2D = "You are an AI visual assistant that can look at a single image and answer questions about it."
_3D = "You are an AI assistant that can perceive a 3D scene given as a point cloud and answer questions about it."

SYSTEM_PROMPTS: dict[str, str] = {
    "classification": _2D + " Name the category of the main object or scene in the image, choosing from the given options when they are listed.",
    "detection": _2D + " Find every requested object in the image and give its bounding box as [x1, y1, x2, y2] in coordinates relative to the image size.",
    "keypoint_detection": _2D + " Locate the requested keypoints of every person in the image and give each as [x, y] relative to the image size.",
    "vqa": _2D + " Read the question carefully, look at the image and answer the question accurately and concisely.",
    "counting": _2D + " Count the requested objects in the image and answer with the number.",
    "conversation": _2D + " Have a helpful, friendly conversation with the user about what the image shows, answering as if you are seeing it.",
    "description": _2D + " Describe the image in detail: the objects, their attributes, positions and relations, and what is happening.",
    "commonsense_qa": _2D + " Use the image together with common-sense and scientific knowledge to reason about the question, then give the answer.",
    "classification3d": _3D + " Name the category of the object in the point cloud, choosing from the given options when they are listed.",
    "detection3d": _3D + " Find the requested objects in the scene and give each 3D bounding box as [x1, y1, z1, x2, y2, z2].",
    "vqa3d": _3D + " Read the question carefully, examine the point cloud and answer the question accurately and concisely.",
    "video": "You are an AI visual assistant that can watch a short video and answer questions about what happens in it.",
    "default": "You are an AI assistant that can see the media the user shares and answers the user's questions helpfully and accurately.",
}

# Spellings seen in LAMM-style data for the same task.
_ALIASES: dict[str, str] = {
    "keypoint": "keypoint_detection",
    "keypoints": "keypoint_detection",
    "visual_question_answering": "vqa",
    "detailed_description": "description",
    "caption": "description",
    "captioning": "description",
    "commonsenseqa": "commonsense_qa",
    "common_sense_qa": "commonsense_qa",
    "classification_3d": "classification3d",
    "detection_3d": "detection3d",
    "vqa_3d": "vqa3d",
}


def normalise_task(task_type: str) -> str:
    """Lower-case, underscore-separated task key with aliases folded ("Commonsense QA" -> commonsense_qa)."""
    key = "_".join(task_type.strip().lower().replace("-", " ").split())
    return _ALIASES.get(key, key)


def system_prompt_for(task_type: str | None, modalities: set[str]) -> str:
    """The system prompt for a task type; unknown or missing task types fall back by modality."""
    if task_type:
        key = normalise_task(task_type)
        if key in SYSTEM_PROMPTS:
            return SYSTEM_PROMPTS[key]
    if "pointcloud" in modalities:
        return _3D
    if "video" in modalities:
        return SYSTEM_PROMPTS["video"]
    if "image" in modalities:
        return _2D
    return SYSTEM_PROMPTS["default"]
